"""`bitconv batch jobs.toml`: several conversions in one run, for CI pipelines and model zoos.

The local executor runs the jobs one after another (memory stays that of one conversion); the Ray
executor (`--ray ADDRESS`, or `[run] executor = "ray"`) runs each job as one task of a Ray cluster
(ray_batch.py). Either way a failure does not stop the others unless `fail_fast`, and each job
reports its artifact's sha256, size, time and validation verdict. A job whose output is unchanged —
its manifest records the same bitconv version, the same options and the same input hashes, and the
output still hashes as recorded — is skipped, so a CI cache makes re-runs cheap (`force` redoes it).

    [defaults]                 # optional: keys every job inherits
    validate = true

    [run]                      # optional: how the jobs run
    executor = "ray"           # local (default) | ray
    address = "auto"           # the Ray cluster: auto, HOST:PORT or ray://HOST:10001
    retries = 2                # attempts after a worker or node is lost (default 2)

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

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .errors import UsageError
from .jobs import Job, JobResult, load_batch, load_jobs, run_job

__all__ = ["BatchReport", "Job", "JobResult", "load_jobs", "run_batch", "run_job", "DEFAULT_RETRIES"]

#: attempts after a lost worker or node (the Ray executor), unless --ray-retries / [run] retries say otherwise
DEFAULT_RETRIES = 2
_CLUSTER_FIELDS = ("node", "retries", "lost_attempts")


@dataclass
class BatchReport:
    file: str
    jobs: list[JobResult] = field(default_factory=list)
    executor: str = "local"
    #: the Ray executor: the cluster's address and nodes, and the run's wall time with Ray's overhead
    cluster: dict[str, Any] | None = None

    @property
    def failed(self) -> int:
        return sum(j.status == "failed" for j in self.jobs)

    @property
    def passed(self) -> bool:
        return self.failed == 0 and all(j.status != "not run" for j in self.jobs)

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(j.status == s for j in self.jobs) for s in ("ok", "skipped", "failed", "not run")}
        jobs = [asdict(j) for j in self.jobs]
        doc: dict[str, Any] = {"file": self.file, "passed": self.passed, "counts": counts, "jobs": jobs}
        if self.executor == "local":  # the local report is as it was
            for j in jobs:
                for key in _CLUSTER_FIELDS:
                    j.pop(key)
        else:
            doc.update(executor=self.executor, cluster=self.cluster)
        return doc


def run_batch(path: str | os.PathLike[str], *, fail_fast: bool = False, force: bool = False,
              on_job: Callable[[Job, JobResult], None] | None = None, executor: str | None = None,
              address: str | None = None, retries: int | None = None) -> BatchReport:
    """Run every job of the TOML file `path`; the report says what each did. `executor`: "local"
    (in order, here) or "ray" (one task per job on the Ray cluster at `address`: "auto",
    "HOST:PORT", "ray://HOST:10001"; `retries` attempts after a lost worker or node). Unset, they
    come from the file's [run] table."""
    jobs, run = load_batch(path)
    if address is not None and executor is None:
        executor = "ray"
    executor = executor or run.get("executor", "local")
    if executor not in ("local", "ray"):
        raise UsageError(f"executor {executor!r} is not one of local, ray")
    if executor == "ray":
        from .ray_batch import run_on_ray

        report = BatchReport(str(path), executor="ray")
        retries = run.get("retries", DEFAULT_RETRIES) if retries is None else retries
        report.jobs, report.cluster = run_on_ray(jobs, address=address or run.get("address") or "auto",
                                                 retries=retries, fail_fast=fail_fast, force=force, on_job=on_job)
        return report
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
