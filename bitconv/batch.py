"""`bitconv batch jobs.toml`: several conversions in one run, for CI pipelines.

Jobs run one after another (memory stays that of one conversion), a failure does not stop the
others unless `fail_fast`, and each job reports its artifact's sha256, size, time and validation
verdict. A job whose output is unchanged — its manifest records the same bitconv version, the same
options and the same input hashes, and the output still hashes as recorded — is skipped, so a CI
cache makes re-runs cheap (`force` redoes it).

    [defaults]                 # optional: keys every job inherits
    validate = true

    [[job]]
    source = "./Qwen3-0.6B"    # relative paths are relative to the TOML file
    format = "gguf"            # gguf | onnx | a safetensors layout: bitnet-packed, compressed-tensors, …
    quant = "q8_0"             # or: target = "bitnet-x86"
    output = "out/qwen3-q8_0.gguf"
    validate = "llama.cpp"     # true: `bitconv validate OUTPUT --reference SOURCE`; a runtime name adds
                               # `--runtime NAME`: llama.cpp (gguf), onnxruntime (onnx), transformers
                               # (safetensors layouts): that runtime loads the artifact, its tokens and
                               # logits must match the reference
"""
from __future__ import annotations

import json
import os
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

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


@dataclass
class BatchReport:
    file: str
    jobs: list[JobResult] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(j.status == "failed" for j in self.jobs)

    @property
    def passed(self) -> bool:
        return self.failed == 0 and all(j.status != "not run" for j in self.jobs)

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(j.status == s for j in self.jobs) for s in ("ok", "skipped", "failed", "not run")}
        return {"file": self.file, "passed": self.passed, "counts": counts, "jobs": [asdict(j) for j in self.jobs]}


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
    unknown_top = set(doc) - {"job", "defaults"}
    if unknown_top:
        raise UsageError(f"{p}: unknown top-level key(s) {', '.join(sorted(unknown_top))}; expected [[job]] tables "
                         "and an optional [defaults] table")
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
    return out


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


def run_batch(path: str | os.PathLike[str], *, fail_fast: bool = False, force: bool = False,
              on_job: Callable[[Job, JobResult], None] | None = None) -> BatchReport:
    """Run every job of the TOML file `path` in order; the report says what each did."""
    jobs = load_jobs(path)
    report = BatchReport(str(path))
    for i, job in enumerate(jobs):
        res = run_job(job, force=force)
        report.jobs.append(res)
        if on_job:
            on_job(job, res)
        if res.status == "failed" and fail_fast:
            report.jobs += [JobResult(j.name, j.source, j.format, str(j.output), "not run") for j in jobs[i + 1:]]
            break
    return report
