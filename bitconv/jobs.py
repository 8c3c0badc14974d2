"""The jobs of a batch file (`bitconv batch JOBS.toml`; the format is in batch.py): parsing and
checking the file, running one job (skipped when its output is unchanged), sizing it for a cluster.
"""
from __future__ import annotations

import json
import math
import os
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BitconvError, OutputError, UsageError

#: keys a job may set, per format (beyond source/format/output/name/validate)
_COMMON = {"quant", "target", "force_ternarize", "allow_pickle", "revision"}
_FORMAT_KEYS = {
    "gguf": _COMMON | {"lut", "smallest", "kernel_config", "threads", "allow_nonfinite", "pre"},
    "onnx": _COMMON | {"block_size", "threads", "allow_nonfinite"},
}
#: safetensors checkpoint layouts (hf2st --format) are formats of their own in a job file
_ST_KEYS = {"quant", "block_size", "max_shard_size", "linear_class", "allow_pickle", "revision", "threads"}


def _format_keys() -> dict[str, set[str]]:
    from .formats.safetensors import FORMATS

    return {**_FORMAT_KEYS, **{f: _ST_KEYS for f in FORMATS}}
_JOB_KEYS = {"source", "format", "output", "name", "validate"}
#: job options a manifest records, so an unchanged output can be recognised
_RECORDED = {"quant", "target", "force_ternarize", "allow_nonfinite", "revision", "pre", "block_size",
             "max_shard_size", "linear_class"}
#: options whose effect the manifest cannot confirm (a job using them always runs)
_UNVERIFIABLE = {"kernel_config"}


#: the [run] table: how the jobs run (the command line's --ray / --ray-retries override it)
_RUN_KEYS = {"executor": str, "address": str, "retries": int}
EXECUTORS = ("local", "ray")


@dataclass
class JobResult:
    name: str
    source: str
    format: str
    output: str
    status: str  # ok | skipped | failed | not run
    quant: str | None = None
    sha256: str | None = None  # of the artifact (GGUF file; ONNX: model.onnx.data, the weights)
    bytes: int | None = None
    files: list[dict[str, Any]] = field(default_factory=list)  # every output file: path, bytes, sha256
    seconds: float = 0.0
    validation: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    #: the Ray executor: the node that ran the job ("<ip> <node id prefix>") and how often it was
    #: retried after a worker or node was lost (each lost attempt: its node and error)
    node: str | None = None
    retries: int = 0
    lost_attempts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Job:
    name: str
    source: str
    format: str
    output: Path
    validate: bool
    options: dict[str, Any]
    runtime: str | None = None  # validate = "llama.cpp" | "onnxruntime" | "transformers"


def _validate_key(value: Any, fmt: str, where: str) -> tuple[bool, str | None]:
    """`validate = true | false | RUNTIME`: whether to validate, and in which runtime (checked
    against the job's format, so a runtime that cannot read the output fails before anything runs)."""
    from .validate.runtimes import READER, RUNTIMES

    if not isinstance(value, str):
        return bool(value), None
    rt = RUNTIMES.get(value.strip().lower())
    kind = fmt if fmt in ("gguf", "onnx") else "safetensors"
    if rt is None or rt.kind != kind:
        raise UsageError(f"{where}: validate {value!r}: expected true, false or the runtime that reads {fmt} "
                         f"output ({READER[kind]!r})")
    return True, rt.name


def load_jobs(path: str | os.PathLike[str]) -> list[Job]:
    """Parse and check the whole file before anything runs: a typo in job 7 fails in a second."""
    return load_batch(path)[0]


def _run_table(p: Path, run: Any) -> dict[str, Any]:
    if not isinstance(run, dict):
        raise UsageError(f"{p}: 'run' must be a table ([run])")
    for key, value in run.items():
        if key not in _RUN_KEYS:
            raise UsageError(f"{p}: [run]: unknown key {key!r}; allowed: {', '.join(sorted(_RUN_KEYS))}")
        if not isinstance(value, _RUN_KEYS[key]) or isinstance(value, bool):
            raise UsageError(f"{p}: [run]: {key} must be {'an integer' if _RUN_KEYS[key] is int else 'a string'}")
    if run.get("executor", "local") not in EXECUTORS:
        raise UsageError(f"{p}: [run]: executor {run['executor']!r} is not one of {', '.join(EXECUTORS)}")
    if run.get("retries", 0) < 0:
        raise UsageError(f"{p}: [run]: retries must not be negative")
    return dict(run)


def load_batch(path: str | os.PathLike[str]) -> tuple[list[Job], dict[str, Any]]:
    """The jobs of the file and its [run] table (executor, address, retries)."""
    from .targets import get_target

    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{p}: cannot read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{p}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{p}: not UTF-8 text") from None
    except RecursionError:
        raise UsageError(f"{p}: not valid TOML: arrays or tables nested too deeply") from None
    unknown_top = set(doc) - {"job", "defaults", "run"}
    if unknown_top:
        raise UsageError(f"{p}: unknown top-level key(s) {', '.join(sorted(unknown_top))}; expected [[job]] tables, "
                         "an optional [defaults] table and an optional [run] table")
    run = _run_table(p, doc.get("run", {}))
    defaults = doc.get("defaults", {})
    jobs = doc.get("job", [])
    if not isinstance(defaults, dict) or not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise UsageError(f"{p}: 'job' must be an array of tables ([[job]]) and 'defaults' a table")
    if not jobs:
        raise UsageError(f"{p}: no [[job]] tables")
    base = p.parent
    out: list[Job] = []
    seen_outputs: dict[Path, str] = {}
    for i, raw in enumerate(jobs, 1):
        spec = {**defaults, **raw}
        where = f"{p}: job {i}" + (f" ({spec['name']})" if "name" in spec else "")
        for key in ("source", "output"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise UsageError(f"{where}: missing or non-string key {key!r}")
        for key in ("source", "output", "kernel_config"):
            if key in spec and (not isinstance(spec[key], str) or "\0" in spec[key]):
                raise UsageError(f"{where}: {key!r} must be a path (a string without NUL bytes)")
        fmt = spec.get("format") or (get_target(str(spec["target"])).format if spec.get("target") else "gguf")
        format_keys = _format_keys()
        if not isinstance(fmt, str) or fmt not in format_keys:
            raise UsageError(f"{where}: format {fmt!r} is not one of {', '.join(sorted(format_keys))}")
        bad = set(spec) - _JOB_KEYS - format_keys[fmt]
        if bad:
            allowed = ", ".join(sorted(_JOB_KEYS | format_keys[fmt]))
            raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(bad))} for format {fmt}; allowed: {allowed}")
        source = spec["source"]
        src_path = base / source
        if not Path(source).is_absolute() and (src_path.exists() or source.startswith((".", "/"))):
            source = str(src_path)  # a local directory; anything else is a hub repo id
        try:
            output = Path(spec["output"]).expanduser()
        except RuntimeError:  # ~name of a user this machine does not have
            raise UsageError(f"{where}: output {spec['output']!r}: no such user's home directory") from None
        output = output if output.is_absolute() else base / output
        name = str(spec.get("name") or f"job{i}")
        if output.resolve() in seen_outputs:
            raise UsageError(f"{where}: output {output} is also job {seen_outputs[output.resolve()]}'s output")
        seen_outputs[output.resolve()] = name
        options = {k: v for k, v in spec.items() if k not in _JOB_KEYS}
        if "kernel_config" in options:
            kc = Path(options["kernel_config"])
            options["kernel_config"] = str(kc if kc.is_absolute() else base / kc)
        validate, runtime = _validate_key(spec.get("validate", False), fmt, where)
        out.append(Job(name, source, fmt, output, validate, options, runtime))
    return out, run


def _unchanged(job: Job) -> bool:
    """True when `job`'s output is exactly what it would write again."""
    from ._version import __version__
    from .convert.checkpoint import Checkpoint
    from .formats.manifest import file_record, manifest_path_for

    if set(job.options) & _UNVERIFIABLE or not job.output.exists():
        return False
    try:
        manifest = json.loads(manifest_path_for(job.output).read_text())
    except (OSError, ValueError):
        return False
    opts = manifest.get("options", {})
    if manifest.get("bitconv_version") != __version__ or opts.get("format") != job.format:
        return False
    for key in _RECORDED & set(job.options):
        if opts.get(key) != job.options[key]:
            return False
    for key in ("target", "force_ternarize", "allow_nonfinite", "revision"):
        if key in opts and key not in job.options and opts[key] not in (None, False):
            return False  # the artifact was made with an option this job does not ask for
    try:
        checkpoint = Checkpoint.open(job.source, revision=job.options.get("revision"),
                                     allow_pickle=bool(job.options.get("allow_pickle")))
        inputs = [file_record(f, checkpoint.root) for f in checkpoint.input_files()]
    except (BitconvError, OSError):
        return False
    if inputs != manifest.get("inputs") or not manifest.get("outputs"):
        return False
    base = job.output if job.output.is_dir() else job.output.parent
    for rec in manifest["outputs"]:
        f = base / rec["path"]
        if not f.is_file() or file_record(f, base)["sha256"] != rec["sha256"]:
            return False
    return True


def _is_ours(output: Path) -> bool:
    """An existing output that bitconv wrote (it has a manifest): a stale one may be replaced."""
    from .formats.manifest import manifest_path_for

    return output.exists() and manifest_path_for(output).is_file()


def run_job(job: Job, *, force: bool = False) -> JobResult:
    from . import api
    from .validate import validate

    res = JobResult(job.name, job.source, job.format, str(job.output), "ok")
    start = time.perf_counter()
    try:
        if not force and _unchanged(job):
            res.status = "skipped"
            _fill_from_manifest(res, job)
            if job.validate:
                res.validation = {"passed": None, "verdict": "not re-run: the artifact is unchanged"}
            return res
        overwrite = force or _is_ours(job.output)
        try:  # a CI job file names output paths; their folders are created as needed
            job.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {job.output.parent}: {e.strerror or e}") from None
        opts = dict(job.options)
        if job.format == "gguf":
            api.convert(job.source, "gguf", opts.pop("quant", None), job.output, force=overwrite, **opts)
        elif job.format == "onnx":
            api.convert_onnx(job.source, opts.pop("quant", None), job.output, force=overwrite, **opts)
        else:
            api.convert_safetensors(job.source, job.format, job.output, force=overwrite, **opts)
        _fill_from_manifest(res, job)
        if job.validate:
            report = validate(job.output, job.source, runtime=job.runtime)
            res.validation = {"passed": report.passed, "verdict": report.verdict}
            if report.runtime is not None:
                res.validation["runtime"] = asdict(report.runtime)
            if not report.passed:
                res.status = "failed"
                res.error = {"type": "ValidationFailed", "message": report.verdict, "exit_code": 3}
    except BitconvError as e:
        res.status = "failed"
        res.error = {"type": type(e).__name__, "message": " ".join(str(e).split("\n")), "exit_code": e.exit_code}
    finally:
        res.seconds = round(time.perf_counter() - start, 3)
    return res


def _fill_from_manifest(res: JobResult, job: Job) -> None:
    from .formats.manifest import manifest_path_for

    try:
        manifest = json.loads(manifest_path_for(job.output).read_text())
    except (OSError, ValueError):
        return
    res.quant = manifest.get("options", {}).get("quant")
    res.files = manifest.get("outputs", [])
    main = {"gguf": job.output.name, "onnx": "model.onnx.data"}.get(job.format, "model.safetensors")
    rec = next((r for r in res.files if r.get("path") == main), res.files[0] if res.files else None)
    if rec:
        res.sha256, res.bytes = rec.get("sha256"), rec.get("bytes")


#: folder exporters (ONNX, safetensors layouts) stream rows as the GGUF writer does, and hold a little
#: more per tensor: their estimate is the GGUF writer's budget plus this share of the largest tensor
#: in float32 (measured peaks against it in docs/DISTRIBUTED.md)
FOLDER_LARGEST_SHARE = 0.5


def job_threads(job: Job) -> int:
    """The worker threads (and so CPUs) a job takes on a cluster: its `threads`, 1 for 0 (the default)."""
    return int(job.options.get("threads") or 1)


def job_memory(job: Job, threads: int) -> int | None:
    """The job's peak resident bytes from its plan (headers only): what a cluster reserves for it.
    None when the plan cannot be made here (the job then fails on its node, with the reason) or the
    source is not a local path (a hub repo id: each node downloads it, the driver does not)."""
    from . import api
    from .convert.gguf_source import is_gguf_source
    from .formats.gguf_writer import INFLIGHT_PER_THREAD
    from .gguf_output import BASE_MEMORY, memory_estimate

    o = job.options
    if not Path(job.source).exists():
        return None
    try:
        if job.format == "gguf" and is_gguf_source(job.source):
            from .requantize import quantize_output

            quant = o.get("quant") or (None if o.get("target") else api.DEFAULT_GGUF_QUANT)
            plan = quantize_output(job.source, job.output, quant, target=o.get("target"),
                                   force_ternarize=bool(o.get("force_ternarize")),
                                   kernel_config=o.get("kernel_config")).plan
            return memory_estimate(plan, threads)
        if job.format == "gguf":
            _, plan = api.plan_gguf(job.source, o.get("quant"), target=o.get("target"), lut=bool(o.get("lut")),
                                    smallest=bool(o.get("smallest")), revision=o.get("revision"),
                                    allow_pickle=bool(o.get("allow_pickle")),
                                    force_ternarize=bool(o.get("force_ternarize")), kernel_config=o.get("kernel_config"))
            return memory_estimate(plan, threads)
        if is_gguf_source(job.source):
            from .convert.gguf_source import GGUFSource

            largest = max((4 * math.prod(t.shape) for t in GGUFSource.open(job.source)), default=0)
        else:
            from .convert.checkpoint import Checkpoint

            checkpoint = Checkpoint.open(job.source, revision=o.get("revision"), allow_pickle=bool(o.get("allow_pickle")))
            largest = max((4 * t.numel for t in checkpoint), default=0)
        return BASE_MEMORY + threads * INFLIGHT_PER_THREAD + int(FOLDER_LARGEST_SHARE * largest)
    except (BitconvError, OSError):
        return None
