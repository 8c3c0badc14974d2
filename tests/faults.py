"""Fault-injection harness (issue 8): interrupt real `bitconv` conversions and check what is left.

Each injection launches `python -m bitconv hf2gguf|hf2onnx|hf2st SOURCE -o OUT` as a subprocess,
injects one fault, and checks the invariants:

* at the output path there is nothing, or a complete artifact: byte-identical to a clean
  reference run of the same job, which itself passed `bitconv validate ARTIFACT --json`
  (bitconv's output is deterministic, so identity is the strongest check of "complete and valid");
* after a clean error (or an interrupt) no `*bitconv-tmp*` entry is left in the output folder
  and a folder the run created is gone; the error is one line on stderr, never a traceback;
* after SIGKILL a stale temp may remain: the next run must remove it and succeed.

Faults: SIGINT / SIGKILL at seeded random points (spread from process start to past the end, plus
"data all written" — the fsync / rename / manifest phase), disk full (a small tmpfs filled while the
child is stopped mid-write → ENOSPC; or RLIMIT_FSIZE in the child → EFBIG), a source shard deleted
mid-run (child stopped with SIGSTOP once its temp output exists), a read-only output folder (a
read-only bind mount; else the child runs as nobody; else `chattr +i`), before or during the run.

`python tests/faults.py --help` (or benchmarks/faults.py) runs a larger campaign and prints a table.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from cli_helpers import sigint_as_in_a_terminal

TMP_RE = re.compile(r"bitconv-(?:onnx-)?tmp")
NOBODY = 65534


@dataclass(frozen=True)
class Job:
    name: str
    args: tuple[str, ...]
    output: str  # the output's name inside the output folder
    folder: bool  # a folder export (ONNX, safetensors) rather than one file


JOBS: dict[str, Job] = {j.name: j for j in (
    Job("gguf-f16", ("hf2gguf", "-q", "f16"), "model.gguf", False),
    Job("gguf-q8_0", ("hf2gguf", "-q", "q8_0"), "model.gguf", False),
    Job("onnx-int8", ("hf2onnx", "-q", "int8"), "model-onnx", True),
    Job("st-int8", ("hf2st", "--format", "compressed-tensors", "--quant", "int8"), "model-st", True),
)}
MANIFESTS = ("bitconv-manifest.json",)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return env


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# --- what is in an output folder ---------------------------------------------------------------

def temps(out_dir: Path) -> list[Path]:
    """Every bitconv temp file or folder in `out_dir` or one level below (a folder export's stage)."""
    found = [p for p in out_dir.iterdir() if TMP_RE.search(p.name)] if out_dir.is_dir() else []
    for d in (p for p in out_dir.iterdir() if p.is_dir() and not TMP_RE.search(p.name)) if out_dir.is_dir() else ():
        found += [p for p in d.iterdir() if TMP_RE.search(p.name)]
    return sorted(found)


def staged_bytes(out_dir: Path) -> int:
    """Bytes written so far into temp files / staging folders."""
    total = 0
    for t in temps(out_dir):
        try:
            if t.is_dir():
                total += sum(f.stat().st_size for f in t.rglob("*") if f.is_file())
            else:
                total += t.stat().st_size
        except OSError:  # renamed or removed while we looked
            pass
    return total


@dataclass
class Reference:
    """A clean run of a job: its duration, its artifact's files (name → (size, sha256)), validated."""
    job: Job
    seconds: float
    files: dict[str, tuple[int, str]]
    validate: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return sum(s for s, _ in self.files.values())


ABSENT, EMPTY_FOLDER, COMPLETE, PARTIAL = "absent", "empty folder", "complete", "partial"


def artifact_state(job: Job, out_dir: Path, ref: Reference) -> tuple[str, str]:
    """(state, detail): absent / empty folder (a folder export with nothing but temps in it) /
    complete (byte-identical to the validated reference) / partial."""
    path = out_dir / job.output
    if not path.exists():
        return ABSENT, ""
    if not job.folder:
        size, digest = ref.files[job.output]
        if path.stat().st_size != size:
            return PARTIAL, f"{path.name}: {path.stat().st_size} bytes, complete is {size}"
        return (COMPLETE, "") if sha256_file(path) == digest else (PARTIAL, f"{path.name}: other bytes")
    visible = {p.name for p in path.iterdir() if not TMP_RE.search(p.name)}
    if not visible:
        return EMPTY_FOLDER, ""
    for name, (size, digest) in ref.files.items():
        f = path / name
        if not f.is_file():
            return PARTIAL, f"{name} missing (have {sorted(visible)})"
        if f.stat().st_size != size or sha256_file(f) != digest:
            return PARTIAL, f"{name}: other bytes"
    return COMPLETE, ""


# --- launching -------------------------------------------------------------------------------------

def command(job: Job, source: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bitconv", *job.args, str(source), "-o", str(output), "--quiet", *extra]


def _preexec(fsize: int | None = None, user: int | None = None) -> Callable[[], None]:
    def run() -> None:
        sigint_as_in_a_terminal()
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if user is not None:
            os.setgroups([])
            os.setgid(user)
            os.setuid(user)
    return run


def launch(cmd: list[str], *, fsize: int | None = None, user: int | None = None,
           cwd: Path | None = None) -> subprocess.Popen[str]:
    env = cli_env()
    if user is not None:
        env["HOME"] = "/tmp"
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=env, cwd=cwd, restore_signals=True,
                            preexec_fn=_preexec(fsize, user))


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += "\n[harness: the child hung and was killed]"
    return proc.returncode, out, err


def wait_until(pred: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 60) -> bool:
    """Poll `pred` every ~2 ms while the child runs; False if the child ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


def run_clean(job: Job, source: Path, output: Path, *extra: str) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    rc, out, err = finish(launch(command(job, source, output, *extra)))
    return rc, out, err, time.perf_counter() - t0


def validate_structure(artifact: Path, *, in_process: bool = False) -> str:
    """`bitconv validate ARTIFACT --json` (no reference: the structural checks) must pass; its
    verdict. `in_process`: the same check through the Python API (no interpreter start-up)."""
    if in_process:
        from bitconv.validate import validate

        report = validate(str(artifact), None)
        if not report.passed:
            raise RuntimeError(f"{artifact} does not validate: {report.verdict}")
        return report.verdict
    proc = subprocess.run([sys.executable, "-m", "bitconv", "validate", str(artifact), "--json"],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    doc = json.loads(proc.stdout)
    if proc.returncode != 0 or not doc["ok"] or not doc["result"]["passed"]:
        raise RuntimeError(f"{artifact} does not validate: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return doc["result"]["verdict"]


def make_reference(job: Job, source: Path, work: Path, *, llama_check: bool = False,
                   in_process: bool = False) -> Reference:
    """A clean run, `bitconv validate --json` on it (and optionally llama-cpp-python loading a GGUF)."""
    d = work / f"ref-{job.name}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    out = d / job.output
    rc, stdout, stderr, seconds = run_clean(job, source, out)
    if rc != 0:
        raise RuntimeError(f"reference run of {job.name} failed ({rc}): {stderr[-2000:]}")
    verdict = validate_structure(out, in_process=in_process)
    if llama_check and not job.folder:
        llama_load(out)
    if job.folder:
        files = {p.name: (p.stat().st_size, sha256_file(p)) for p in out.iterdir()
                 if p.is_file() and p.name not in MANIFESTS}
    else:
        files = {job.output: (out.stat().st_size, sha256_file(out))}
    shutil.rmtree(d, ignore_errors=True)
    return Reference(job, seconds, files, {"verdict": verdict})


def llama_load(path: Path) -> None:
    """llama-cpp-python loads the GGUF (vocab only: cheap) when it is installed."""
    code = ("import sys, llama_cpp\n"
            "m = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)\n"
            "assert m.n_vocab() > 0\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "No module named 'llama_cpp'" not in proc.stderr:
        raise RuntimeError(f"llama-cpp-python cannot load {path}: {proc.stderr[-2000:]}")


# --- outcomes ----------------------------------------------------------------------------------------

@dataclass
class Outcome:
    fault: str
    job: str
    detail: str  # where / how the fault was injected
    rc: int | None
    stderr: str
    state: str  # of the artifact after the run
    stray: list[str] = field(default_factory=list)  # temps left after a clean error
    problems: list[str] = field(default_factory=list)
    next_rc: int | None = None  # the run after a SIGKILL

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr

    @property
    def ok(self) -> bool:
        return not self.problems


def one_line(stderr: str) -> str | None:
    """The single line of stderr, or None when there is not exactly one."""
    lines = stderr.rstrip("\n").split("\n")
    return lines[0] if len(lines) == 1 and lines[0].strip() else None


def _check_clean_error(o: Outcome, out_dir: Path, job: Job, phrases: tuple[str, ...], code: int = 2) -> None:
    """A clean error: exit `code`, one 'error:' line with one of `phrases`, nothing written, no temps."""
    if o.rc != code:
        o.problems.append(f"exit {o.rc}, expected {code}")
    line = one_line(o.stderr)
    if line is None or not line.startswith("error:"):
        o.problems.append(f"stderr is not one 'error:' line: {o.stderr[-600:]!r}")
    elif phrases and not any(p.lower() in line.lower() for p in phrases):
        o.problems.append(f"message lacks {phrases}: {line!r}")
    _check_nothing_left(o, out_dir, job)


def _check_nothing_left(o: Outcome, out_dir: Path, job: Job) -> None:
    o.stray = [str(p.relative_to(out_dir)) for p in temps(out_dir)]
    if o.stray:
        o.problems.append(f"temps left after a clean error: {o.stray}")
    if o.state == PARTIAL:
        o.problems.append("a partial artifact at the output path")
    elif o.state == COMPLETE:
        o.problems.append("a failed run left a complete artifact (its message said nothing was written?)")
    elif o.state == EMPTY_FOLDER:
        o.problems.append(f"a failed run left the folder {job.output} it created")


def _common(o: Outcome) -> None:
    if o.traceback:
        o.problems.append("traceback on stderr")
    if o.rc == 1:
        o.problems.append("exit 1 (internal error)")
    if o.state == PARTIAL:
        o.problems.append(f"partial artifact: {o.detail}")


def _fresh(work: Path, tag: str) -> Path:
    d = work / tag
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


# --- the faults --------------------------------------------------------------------------------------

MODES = ("start", "t", "end")


def pick_point(rng: random.Random, ref: Reference, mode: str | None = None) -> tuple[str, float | None]:
    """Where to inject: "start" (a random time in the first third of a run: imports, planning,
    before the first tensor), "t" (anywhere from launch to past the end), "end" (as soon as all
    the data bytes are staged: the fsync / rename / manifest phase); `mode` None draws one."""
    mode = mode or rng.choices(MODES, weights=(0.25, 0.55, 0.2))[0]
    if mode == "start":
        return mode, rng.uniform(0.0, 0.35 * ref.seconds)
    if mode == "t":
        return mode, rng.uniform(0.0, 1.15 * ref.seconds)
    return "end", None


def inject_signal(job: Job, source: Path, ref: Reference, work: Path, sig: int, rng: random.Random,
                  tag: str, *, mode: str | None = None, out_dir: Path | None = None,
                  next_run: bool = True) -> Outcome:
    """SIGINT or SIGKILL at a random point. After SIGKILL the next run (unless `next_run` is False:
    the caller chains kills into one `out_dir` and checks one next run at the end) must succeed."""
    own = out_dir is None
    out_dir = out_dir or _fresh(work, tag)
    try:
        return _inject_signal(job, source, ref, out_dir, sig, rng, mode, next_run)
    finally:
        if own:
            shutil.rmtree(out_dir, ignore_errors=True)


def _inject_signal(job: Job, source: Path, ref: Reference, out_dir: Path, sig: int, rng: random.Random,
                   mode: str | None, next_run: bool) -> Outcome:
    output = out_dir / job.output
    mode, delay = pick_point(rng, ref, mode)
    t0 = time.monotonic()
    proc = launch(command(job, source, output))
    if delay is not None:
        while proc.poll() is None and time.monotonic() - t0 < delay:
            time.sleep(min(0.002, max(0.0, delay - (time.monotonic() - t0))))
    else:
        wait_until(lambda: staged_bytes(out_dir) >= ref.nbytes or output.exists(), proc)
    sent = time.monotonic() - t0
    alive = proc.poll() is None
    if alive:
        proc.send_signal(sig)
    rc, _, stderr = finish(proc)
    detail = f"{signal.Signals(sig).name} at {sent:.3f} s ({mode})" + ("" if alive else " (after exit)")
    state, why = artifact_state(job, out_dir, ref)
    o = Outcome(signal.Signals(sig).name, job.name, detail + (f"; {why}" if why else ""), rc, stderr, state)
    if sig == signal.SIGINT and python_startup(o):
        o.detail += " (in Python's own start-up, before bitconv's code)"
        _check_nothing_left(o, out_dir, job)
        return o
    _common(o)
    if sig == signal.SIGINT:
        _check_sigint(o, out_dir, job)
    else:
        if o.rc not in (0, -signal.SIGKILL):
            o.problems.append(f"exit {o.rc} after SIGKILL")
        if o.rc == 0 and o.state != COMPLETE:
            o.problems.append(f"exit 0 but the artifact is {o.state}")
        if next_run:
            check_next_run(o, job, source, ref, out_dir)
    return o


def python_startup(o: Outcome) -> bool:
    """Interrupted inside Python's own start-up (site, .pth files) before any bitconv module ran:
    Python prints that traceback; nothing of bitconv's can catch it."""
    return (o.rc not in (0, 130) and "KeyboardInterrupt" in o.stderr
            and re.search(r'File "[^"]*[/\\]bitconv[/\\]', o.stderr) is None and o.state == ABSENT)


def _check_sigint(o: Outcome, out_dir: Path, job: Job) -> None:
    if o.rc == 0:
        if o.state != COMPLETE:
            o.problems.append(f"exit 0 but the artifact is {o.state}")
        return
    if o.rc == -signal.SIGINT and not o.stderr.strip():
        # the signal came before Python installed its handler (the first milliseconds of start-up)
        # or after it restored the default one (the last ones of shut-down): the process died of it,
        # as a shell reports with 130, having written nothing or everything
        if o.state != COMPLETE:
            _check_nothing_left(o, out_dir, job)
        return
    if o.rc != 130:
        o.problems.append(f"exit {o.rc}, expected 130")
    line = one_line(o.stderr)
    if line is None or "interrupted" not in line:
        o.problems.append(f"stderr is not one 'interrupted' line: {o.stderr[-600:]!r}")
        return
    if o.state == COMPLETE:  # interrupted after the rename: the artifact is whole, the message must say so
        if "nothing written" in line.split(";")[0]:
            o.problems.append(f"says nothing written but {job.output} is there: {line!r}")
        o.stray = [str(p.relative_to(out_dir)) for p in temps(out_dir)]
        if o.stray:
            o.problems.append(f"temps left after an interrupt: {o.stray}")
    else:
        if "interrupted, nothing written" not in line:
            o.problems.append(f"message: {line!r}")
        _check_nothing_left(o, out_dir, job)


def check_next_run(o: Outcome, job: Job, source: Path, ref: Reference, out_dir: Path) -> None:
    """The run after a SIGKILL: the same command (with --force when the killed run had finished its
    artifact) succeeds, its artifact is complete and no temp (of any dead run) is left."""
    left = [p.name for p in temps(out_dir)]
    extra = ("--force",) if artifact_state(job, out_dir, ref)[0] == COMPLETE else ()
    rc, _, stderr, _ = run_clean(job, source, out_dir / job.output, *extra)
    o.next_rc = rc
    if rc != 0:
        o.problems.append(f"next run failed ({rc}): {stderr.strip()[-600:]}")
    if "Traceback" in stderr:
        o.problems.append("next run: traceback")
    state, why = artifact_state(job, out_dir, ref)
    if state != COMPLETE:
        o.problems.append(f"next run's artifact is {state}: {why}")
    still = [str(p.relative_to(out_dir)) for p in temps(out_dir)]
    if still:
        o.problems.append(f"next run left temps (stale before it: {left}): {still}")
    o.detail += f"; next run removed {len(left)} stale temp(s)"


def kill_chain(job: Job, source: Path, ref: Reference, work: Path, rng: random.Random, tag: str, n: int,
               tally: Tally | None = None) -> Tally:
    """n SIGKILLs at random points into one output folder (each run meets the previous ones' stale
    temps; a complete artifact is checked and removed), then one next run that must succeed."""
    tally = tally or Tally()
    out_dir = _fresh(work, tag)
    outcomes = []
    for i in range(n):
        o = inject_signal(job, source, ref, work, signal.SIGKILL, rng, tag, out_dir=out_dir, next_run=False)
        if o.state == COMPLETE:
            _discard(out_dir / job.output)
        outcomes.append(o)
    check_next_run(outcomes[-1], job, source, ref, out_dir)
    for o in outcomes:
        tally.add(o)
    shutil.rmtree(out_dir, ignore_errors=True)
    return tally


def _discard(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


# disk full ------------------------------------------------------------------------------------------

_TMPFS_OK: bool | None = None


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       timeout=30)
    if r.returncode != 0:
        raise PermissionError(r.stderr.decode(errors="replace").strip())
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@contextlib.contextmanager
def scratch(work: Path, size: int = 8 << 30) -> Iterator[Path]:
    """Where the runs write: a tmpfs under `work` when this process may mount one (no fsync cost:
    on a busy disk a 300 MB fsync takes seconds, which would swamp the random points), else `work`."""
    with contextlib.ExitStack() as stack:
        try:
            d = stack.enter_context(tmpfs(work / "scratch", size))
        except (PermissionError, OSError, subprocess.SubprocessError):
            d = work
        yield d


def tmpfs_available(work: Path) -> bool:
    global _TMPFS_OK
    if _TMPFS_OK is None:
        try:
            with tmpfs(work / "tmpfs-probe", 1 << 20):
                _TMPFS_OK = True
        except (OSError, subprocess.SubprocessError):
            _TMPFS_OK = False
    return _TMPFS_OK


def fill(path: Path, nbytes: int) -> int:
    """Allocate up to `nbytes` in a new file (as much as fits, to the page); the bytes allocated."""
    done, chunk = 0, max(0, nbytes)
    with open(path, "wb") as f:
        while chunk >= 4096 and done < nbytes:
            try:
                os.posix_fallocate(f.fileno(), done, min(chunk, nbytes - done))
                done += min(chunk, nbytes - done)
            except OSError:
                chunk //= 2
    return done


DISK_FULL_PHRASES = ("disk full", "file too large", "file size limit")


def inject_disk_full_tmpfs(job: Job, source: Path, ref: Reference, work: Path, rng: random.Random,
                           tag: str) -> Outcome:
    """ENOSPC for real: the output folder is a tmpfs with room for the artifact (so the up-front
    free-space check passes); once the child has staged a random share of its data it is stopped,
    the tmpfs is filled to a random few bytes short of what is still to come, and it goes on."""
    mnt = work / tag
    shutil.rmtree(mnt, ignore_errors=True)
    with tmpfs(mnt, ref.nbytes + (32 << 20)) as out_dir:
        output = out_dir / job.output
        share = rng.uniform(0.0, 0.9)
        proc = launch(command(job, source, output))
        reached = wait_until(lambda: bool(temps(out_dir)) and staged_bytes(out_dir) >= share * ref.nbytes, proc)
        detail = "run ended before the fill"
        if reached:
            proc.send_signal(signal.SIGSTOP)
            staged = staged_bytes(out_dir)
            free = shutil.disk_usage(out_dir).free
            keep = rng.randrange(0, max(1, min(free, ref.nbytes - staged)))
            fill(out_dir / "filler", free - keep)
            proc.send_signal(signal.SIGCONT)
            detail = f"filled at {staged / max(1, ref.nbytes):.0%} staged, {keep:,} bytes left"
        rc, _, stderr = finish(proc)
        state, why = artifact_state(job, out_dir, ref)
        o = Outcome("disk full (tmpfs, ENOSPC)", job.name, detail + (f"; {why}" if why else ""), rc, stderr, state)
        _common(o)
        if reached:
            _check_clean_error(o, out_dir, job, DISK_FULL_PHRASES)
        else:
            o.problems.append("the run ended before the disk could be filled")
    shutil.rmtree(mnt, ignore_errors=True)
    return o


def inject_fsize(job: Job, source: Path, ref: Reference, work: Path, rng: random.Random, tag: str) -> Outcome:
    """EFBIG: the child's RLIMIT_FSIZE below its largest output file (SIGXFSZ ignored)."""
    out_dir = _fresh(work, tag)
    largest = max(s for s, _ in ref.files.values())
    limit = rng.randrange(1 << 12, largest)
    proc = launch(command(job, source, out_dir / job.output), fsize=limit)
    rc, _, stderr = finish(proc)
    state, why = artifact_state(job, out_dir, ref)
    o = Outcome("file size limit (EFBIG)", job.name, f"RLIMIT_FSIZE {limit:,} of {largest:,}" +
                (f"; {why}" if why else ""), rc, stderr, state)
    _common(o)
    _check_clean_error(o, out_dir, job, DISK_FULL_PHRASES)
    shutil.rmtree(out_dir, ignore_errors=True)
    return o


# a source shard deleted -------------------------------------------------------------------------------

def link_copy(src: Path, dst: Path) -> Path:
    """A private copy of a checkpoint made of hard links (deleting a file there leaves `src` alone)."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # another file system: a copy
            shutil.copy2(a, b)

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=link)
    return dst


def shards_of(checkpoint: Path) -> list[str]:
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))


def last_shard(checkpoint: Path) -> str:
    """The shard holding lm_head.weight (GGUF `output.weight`, written last)."""
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    return index["weight_map"].get("lm_head.weight") or shards_of(checkpoint)[-1]


def inject_shard_deleted(job: Job, sharded: Path, ref: Reference | None, work: Path, rng: random.Random,
                         tag: str, shard: str | None = None) -> Outcome:
    """Stop the child once its temp output exists (after a random extra delay), delete a shard
    (`shard`, else a random one), let it go on: a clean error naming the file, or — when the child
    had already read all of that shard — a complete artifact."""
    out_dir = _fresh(work, tag)
    src = link_copy(sharded, work / f"{tag}-src")
    shard = shard or (last_shard(src) if rng.random() < 0.5 else rng.choice(shards_of(src)))
    proc = launch(command(job, src, out_dir / job.output))
    seen = wait_until(lambda: bool(temps(out_dir)), proc)
    extra = rng.uniform(0.0, 0.05)
    time.sleep(extra)
    if proc.poll() is None:
        proc.send_signal(signal.SIGSTOP)
        (src / shard).unlink()
        proc.send_signal(signal.SIGCONT)
    rc, _, stderr = finish(proc)
    state, why = (artifact_state(job, out_dir, ref) if ref else
                  ((COMPLETE if (out_dir / job.output).exists() else ABSENT), ""))
    o = Outcome("source shard deleted", job.name, f"{shard} deleted {extra * 1000:.0f} ms after the temp appeared"
                + ("" if seen else " (temp never seen)"), rc, stderr, state)
    _common(o)
    if rc == 0:
        if state != COMPLETE:
            o.problems.append(f"exit 0 but the artifact is {state}: {why}")
    else:
        _check_clean_error(o, out_dir, job, (shard,))
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    return o


# a read-only output folder -----------------------------------------------------------------------------

@contextlib.contextmanager
def read_only(folder: Path, how: str) -> Iterator[None]:
    """Make `folder` read-only for the child, in a way root cannot write through: a read-only bind
    mount ("bind"), the child running as nobody ("user": done by the caller), or `chattr +i` ("immutable")."""
    if how == "bind":
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True, capture_output=True, timeout=30)
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, capture_output=True,
                           timeout=30)
            yield
        finally:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)
    elif how == "immutable":
        subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True, timeout=30)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True, timeout=30)
    else:
        yield


def read_only_mechanism(work: Path) -> str:
    """The first read-only mechanism that really stops this process's writes here."""
    probe = work / "ro-probe"
    probe.mkdir(parents=True, exist_ok=True)
    for how in ("bind", "immutable"):
        try:
            with read_only(probe, how):
                try:
                    (probe / "x").write_bytes(b"x")
                except OSError:
                    return how
                (probe / "x").unlink()
        except (OSError, subprocess.SubprocessError):
            continue
    if os.geteuid() != 0:
        return "chmod"  # not root: the mode bits are enough
    try:  # root without mounts or chattr: the child as nobody, if nobody can run this interpreter
        probe_rc = subprocess.run([sys.executable, "-c", "import bitconv"], preexec_fn=_preexec(user=NOBODY),
                                  capture_output=True, timeout=60, env=cli_env(), cwd="/").returncode
    except OSError:
        probe_rc = 1
    return "user" if probe_rc == 0 else "none"


def _world_readable(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    for parent in path.parents:  # the user needs to reach it
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            parent.chmod(os.stat(parent).st_mode | 0o011)


def inject_read_only(job: Job, source: Path, work: Path, rng: random.Random, tag: str, *,
                     during: bool = False, how: str | None = None, ref: Reference | None = None) -> Outcome:
    """The output folder is read-only from the start, or (`during`) made read-only while the child
    is stopped mid-write (after a random share of its data). Expected: one 'error:' line, exit 2, no
    artifact. From the start: no temp either. Mid-run the temp cannot be removed from a read-only
    folder: once it is writable again the next run must remove it and succeed."""
    how = how or read_only_mechanism(work)
    out_dir = _fresh(work, tag)
    output = out_dir / job.output
    user = None
    if how == "user":
        if during:
            raise ValueError("a mid-run read-only folder needs a bind mount or chattr")
        src = work / f"{tag}-src"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(source, src)
        _world_readable(src)
        source = src
        out_dir.chmod(0o755)  # nobody cannot write here
        user = NOBODY
    elif how == "chmod":  # not root: the mode is enough
        out_dir.chmod(0o555)
    mechanism = how if how in ("bind", "immutable") else "none"
    if not during:
        with read_only(out_dir, mechanism):
            rc, _, stderr = finish(launch(command(job, source, output), user=user, cwd=out_dir.parent))
        detail = f"read-only ({how}) from the start"
    else:
        delay = rng.uniform(0.0, 0.8)
        proc = launch(command(job, source, output))
        wait_until(lambda: bool(temps(out_dir)), proc)
        time.sleep(delay)  # a random share of the run
        proc.send_signal(signal.SIGSTOP)
        staged = staged_bytes(out_dir)
        with read_only(out_dir, mechanism):
            proc.send_signal(signal.SIGCONT)
            rc, _, stderr = finish(proc)
        detail = f"read-only ({how}) after {staged:,} bytes staged"
    state = ABSENT
    if output.exists():
        state = artifact_state(job, out_dir, ref)[0] if ref is not None else PARTIAL
    o = Outcome("read-only output folder", job.name, detail, rc, stderr, state)
    _common(o)
    phrases = ("not writable", "read-only", "permission denied", "operation not permitted")
    if not during:
        _check_clean_error(o, out_dir, job, phrases)
    elif rc == 0:  # it had finished before the folder became read-only
        if state != COMPLETE:
            o.problems.append(f"exit 0 but the artifact is {state}")
    else:
        # the temp cannot be removed from a read-only folder: the next run's business (checked below).
        # The artifact may be complete: then it was its manifest that could not be written.
        line = one_line(stderr)
        if rc != 2 or line is None or not line.startswith("error:"):
            o.problems.append(f"not one 'error:' line and exit 2: exit {rc}, {stderr[-600:]!r}")
        elif not any(p in line.lower() for p in phrases):
            o.problems.append(f"message lacks {phrases}: {line!r}")
        elif state == COMPLETE and "manifest" not in line:
            o.problems.append(f"the artifact is complete but the error does not name what failed: {line!r}")
        elif state == ABSENT and "nothing written" not in line:
            o.problems.append(f"nothing was written and the message does not say so: {line!r}")
        stray = temps(out_dir)
        extra = ("--force",) if output.exists() else ()
        rc2, _, err2, _ = run_clean(job, source, output, *extra)
        o.next_rc = rc2
        if rc2 != 0 or temps(out_dir) or "Traceback" in err2:
            o.problems.append(f"next run: exit {rc2}, temps {temps(out_dir)}: {err2[-600:]}")
        o.detail += f"; {len(stray)} temp(s) left in the read-only folder, removed by the next run"
    if how == "chmod":
        out_dir.chmod(0o755)
    shutil.rmtree(out_dir, ignore_errors=True)
    return o


# --- tallies -------------------------------------------------------------------------------------------

@dataclass
class Tally:
    injected: int = 0
    exit_codes: Counter[int | None] = field(default_factory=Counter)
    partial: int = 0
    stray: int = 0
    tracebacks: int = 0
    python_startup: int = 0  # SIGINT inside Python's start-up, before bitconv's first line: Python's traceback
    next_runs: int = 0
    next_ok: int = 0
    failures: list[Outcome] = field(default_factory=list)

    def add(self, o: Outcome) -> None:
        self.injected += 1
        self.exit_codes[o.rc] += 1
        self.partial += o.state == PARTIAL
        self.stray += bool(o.stray) and o.rc not in (-signal.SIGKILL,)
        startup = "Python's own start-up" in o.detail
        self.python_startup += startup
        self.tracebacks += o.traceback and not startup
        if o.next_rc is not None:
            self.next_runs += 1
            self.next_ok += o.next_rc == 0 and not any("next run" in p for p in o.problems)
        if not o.ok:
            self.failures.append(o)

    def summary(self) -> str:
        return "; ".join(f"{o.job} {o.detail}: {', '.join(o.problems)}" for o in self.failures)


def run_many(fn: Callable[[random.Random, str], Outcome], n: int, seed: int, tally: Tally | None = None,
             label: str = "x") -> Tally:
    tally = tally or Tally()
    rng = random.Random(seed)
    for i in range(n):
        tally.add(fn(rng, f"{label}-{i}"))
    return tally


# --- the standalone campaign -----------------------------------------------------------------------------

def _codes(c: Counter[int | None]) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(c.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))


def campaign(n: int, seed: int, work: Path, *, jobs: list[str] | None = None, faults: list[str] | None = None,
             out: Callable[[str], None] = print) -> dict[tuple[str, str], Tally]:
    sys.path.insert(0, str(Path(__file__).parent))
    import fixtures

    jobs = jobs or list(JOBS)
    faults = faults or ["SIGINT", "SIGKILL", "disk full", "shard deleted", "read-only"]
    t0 = time.perf_counter()
    big = fixtures.make_checkpoint(work / "ckpt-big", arch="qwen2", dtype="f32", shards=1, hidden=512, layers=4)
    sharded = fixtures.make_checkpoint(work / "ckpt-sharded", arch="qwen2", dtype="f32", shards=3, hidden=512,
                                       layers=4)
    out(f"fixtures built in {time.perf_counter() - t0:.1f} s")
    refs = {j: make_reference(JOBS[j], big, work, llama_check=True) for j in jobs}
    for j, r in refs.items():
        out(f"reference {j}: {r.seconds:.2f} s, {r.nbytes:,} bytes, {r.validate['verdict']}")
    results: dict[tuple[str, str], Tally] = {}
    k = 0
    for fault in faults:
        for j in jobs:
            job, ref = JOBS[j], refs[j]
            k += 1
            s = seed * 1000 + k
            label = f"{fault.replace(' ', '-')}-{j}"
            if fault == "SIGINT":
                t = run_many(lambda rng, tag: inject_signal(job, big, ref, work, signal.SIGINT, rng, tag), n, s,
                             label=label)
            elif fault == "SIGKILL":  # chains of 5 kills into one folder, then the next run
                t, rng = Tally(), random.Random(s)
                for i in range(0, n, 5):
                    kill_chain(job, big, ref, work, rng, f"{label}-{i}", min(5, n - i), t)
            elif fault == "disk full":
                t = Tally()
                if tmpfs_available(work):
                    run_many(lambda rng, tag: inject_disk_full_tmpfs(job, big, ref, work, rng, tag), n // 2, s, t,
                             label)
                run_many(lambda rng, tag: inject_fsize(job, big, ref, work, rng, tag), n - t.injected, s + 500, t,
                         label)
            elif fault == "shard deleted":
                if job.folder or j != jobs[0]:
                    continue
                sref = make_reference(job, sharded, work)
                t = run_many(lambda rng, tag: inject_shard_deleted(job, sharded, sref, work, rng, tag), n, s,
                             label=label)
            elif fault == "read-only":
                if job.folder or j != jobs[0]:
                    continue
                t = run_many(lambda rng, tag: inject_read_only(job, big, work, rng, tag, during=rng.random() < 0.5,
                                                               ref=ref), n, s, label=label)
            else:
                raise ValueError(fault)
            results[(fault, j)] = t
            out(f"{fault:>14} {j:<10} {t.injected} injected, exits {_codes(t.exit_codes)}, partial {t.partial}, "
                f"stray {t.stray}, tracebacks {t.tracebacks}, in Python start-up {t.python_startup}, "
                f"next runs ok {t.next_ok}/{t.next_runs}, failures {len(t.failures)}")
            for o in t.failures[:5]:
                out(f"    FAIL {o.detail}: {'; '.join(o.problems)} [exit {o.rc}, stderr {o.stderr[-800:]!r}]")
    return results


def table(results: dict[tuple[str, str], Tally]) -> str:
    rows = ["| fault | format | injected | exit codes seen | partial artifacts | stray temps after clean errors "
            "| tracebacks | next run ok | runs failing a check |",
            "|---|---|---:|---|---:|---:|---:|---|---:|"]
    for (fault, j), t in results.items():
        nxt = f"{t.next_ok}/{t.next_runs}" if t.next_runs else "—"
        tb = f"{t.tracebacks}" + (f" (+{t.python_startup} in Python's start-up)" if t.python_startup else "")
        rows.append(f"| {fault} | {j} | {t.injected} | {_codes(t.exit_codes)} | {t.partial} | {t.stray} | "
                    f"{tb} | {nxt} | {len(t.failures)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Interrupt bitconv conversions many times and check what is left.")
    ap.add_argument("-n", type=int, default=50, help="injections per fault kind and format (default 50)")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--jobs", default=None, help=f"comma-separated subset of {','.join(JOBS)}")
    ap.add_argument("--faults", default=None,
                    help="comma-separated subset of SIGINT,SIGKILL,disk full,shard deleted,read-only")
    ap.add_argument("--work", default=None, help="work folder (default: a temp folder, removed)")
    args = ap.parse_args(argv)
    jobs = args.jobs.split(",") if args.jobs else None
    faults = args.faults.split(",") if args.faults else None
    with contextlib.ExitStack() as stack:
        base = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faults-")))
        work = stack.enter_context(scratch(base, 16 << 30))
        print(f"work folder {work}" + (" (tmpfs)" if work != base else ""))
        t0 = time.perf_counter()
        results = campaign(args.n, args.seed, work, jobs=jobs, faults=faults)
        print()
        print(f"{sum(t.injected for t in results.values())} injections in {time.perf_counter() - t0:.0f} s, "
              f"seed {args.seed}")
        print(table(results))
    bad = sum(len(t.failures) for t in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
