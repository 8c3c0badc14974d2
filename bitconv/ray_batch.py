"""The Ray executor of `bitconv batch` (`--ray ADDRESS`, or `[run] executor = "ray"`).

Each job is one Ray task asking for `num_cpus` = its threads (the default 0 means 1 under Ray) and
`memory` = its plan's own memory estimate, so Ray never packs more conversions on a node than fit.
The task checks its source and output folder on its node, then runs the job exactly as the local
executor does (`jobs.run_job`: skip-unchanged, the atomic writers, validation), so the outputs are
the same bytes. The report is the local one plus the node each job ran on and its retries; a job
lost with its worker or node is retried (ray_cluster.run_tasks), a job that fails is reported failed
and the others finish; `fail_fast` cancels the rest.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ._version import __version__
from .errors import BitconvError, OutputError
from .jobs import Job, JobResult, job_memory, job_threads, run_job
from .ray_cluster import (ClusterError, Outcome, check_paths, connected, error_record, node_setup, nodes, remote,
                          run_tasks, unplaceable)


def _job_task(job: Job, force: bool, threads: int, driver_version: str) -> tuple[JobResult, str | None]:
    """One job, on whichever node Ray placed it: its result and the node's label."""
    label = None
    try:
        label = node_setup(driver_version)
        sources = [job.source] + ([job.options["kernel_config"]] if "kernel_config" in job.options else [])
        check_paths(label, sources, [job.output.parent])
    except BitconvError as e:
        return JobResult(job.name, job.source, job.format, str(job.output), "failed", error=error_record(e)), label
    return run_job(replace(job, options={**job.options, "threads": threads}), force=force), label


def _failed(job: Job, e: BitconvError) -> JobResult:
    return JobResult(job.name, job.source, job.format, str(job.output), "failed", error=error_record(e))


def _folders(jobs: list[Job]) -> list[Path]:
    """Where the jobs' temp files can be: beside each output, and inside a folder output (--force)."""
    return sorted({p for j in jobs for p in ((j.output.parent,) if j.format == "gguf" else (j.output.parent, j.output))})


def run_on_ray(jobs: list[Job], *, address: str, retries: int, fail_fast: bool = False, force: bool = False,
               on_job: Callable[[Job, JobResult], None] | None = None) -> tuple[list[JobResult], dict[str, Any]]:
    """Run `jobs` on the Ray cluster at `address`; returns their results (in job order) and what
    the report says about the cluster (address, nodes, wall time including Ray's scheduling)."""
    with connected(address) as ray:
        start = time.perf_counter()
        live = nodes(ray)
        results: list[JobResult | None] = [None] * len(jobs)
        runnable: list[tuple[int, int, int | None]] = []  # (job index, CPUs, memory)
        for i, job in enumerate(jobs):
            threads = job_threads(job)
            memory = job_memory(job, threads)
            try:  # as the local executor does; on shared storage the folder then exists on every node
                job.output.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                results[i] = _failed(job, OutputError(f"cannot create {job.output.parent}: {e.strerror or e}"))
                continue
            if (why := unplaceable(live, threads, memory)) is not None:
                results[i] = _failed(job, ClusterError(f"no node of the cluster can run job {job.name}: it {why}"))
                continue
            runnable.append((i, threads, memory))
        for i, res in enumerate(results):
            if res is not None and on_job:
                on_job(jobs[i], res)
        if fail_fast and any(r is not None for r in results):
            runnable = []
        task = remote(ray, _job_task)

        def submit(k: int) -> Any:
            i, cpus, memory = runnable[k]
            opts: dict[str, Any] = {"num_cpus": cpus, "max_retries": 0, "name": f"bitconv batch {jobs[i].name}"}
            if memory:
                opts["memory"] = memory
            return task.options(**opts).remote(jobs[i], force, cpus, __version__)

        def on_done(k: int, outcome: Outcome) -> bool:
            i = runnable[k][0]
            job = jobs[i]
            if outcome.cancelled:
                return False
            if outcome.error is not None:
                res = JobResult(job.name, job.source, job.format, str(job.output), "failed", error=outcome.error)
            else:
                res, node = outcome.value
                res.node = node
            res.retries, res.lost_attempts = outcome.retries, outcome.lost
            results[i] = res
            if on_job:
                on_job(job, res)
            return fail_fast and res.status == "failed"

        run_tasks(ray, submit, len(runnable), retries=retries, folders=_folders(jobs), on_done=on_done)
        final = [r or JobResult(j.name, j.source, j.format, str(j.output), "not run") for j, r in zip(jobs, results)]
        cluster = {"address": address, "nodes": [n["label"] for n in live], "retries": retries,
                   "seconds": round(time.perf_counter() - start, 3)}
        return final, cluster
