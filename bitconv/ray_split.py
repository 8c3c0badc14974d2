"""One model across a Ray cluster: `bitconv hf2gguf SOURCE --split-max-size 45G --ray ADDRESS`.

Each file of the split set is one Ray task, on any node (`num_cpus` = threads, `memory` = the plan's
estimate). The task re-opens the source and re-plans on its node (headers only), checks that its
plan is the driver's (`GGUFOutput.fingerprint`), and writes its one file with
`gguf_split.write_split` — the same bytes as in a single-machine run — into a staging folder beside
the output. Once every file is there the driver commits the set as `write_split_set` does (the
tl1/tl2 kernel files, then all files renamed into place together) and writes the set's one manifest
(`GGUFOutput.finish`). A failed file, a lost task out of retries or Ctrl-C leaves none of the set.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from . import api, errors
from ._version import __version__
from .errors import BitconvError, CheckpointError
from .formats import atomic, gguf_split
from .gguf_output import GGUFOutput
from .ray_cluster import (ClusterError, check_paths, connected, error_record, node_setup, nodes, remote, run_tasks,
                          unplaceable)
from .results import ConversionResult


def _as_error(rec: dict[str, Any]) -> BitconvError:
    """A task's error record as the error the driver raises (same type where bitconv has it)."""
    cls = getattr(errors, rec.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, BitconvError)):
        cls = ClusterError
    e = cls(rec["message"])
    e.exit_code = rec.get("exit_code", e.exit_code)
    return e


def _split_task(source: str, quant: str | None, out: str, plan_options: dict[str, Any], index: int, stage: str,
                fingerprint: str, threads: int, allow_nonfinite: bool, driver_version: str) -> dict[str, Any]:
    """File `index` of the set, on whichever node Ray placed it: {record, node} or {error, node}."""
    label = None
    try:
        label = node_setup(driver_version)
        kc = plan_options.get("kernel_config")
        check_paths(label, [source] + ([str(kc)] if kc else []), [Path(stage)])
        job = api.gguf_output(source, quant, out, **plan_options)
        if job.fingerprint() != fingerprint:
            raise CheckpointError(f"node {label}: {source} plans differently there than on the driver (changed "
                                  "meanwhile, or another bitconv build); nothing written")
        record = gguf_split.write_split(Path(stage) / job.out_path.name, job.plan, job.metadata, job.splits, index,
                                        force=True, **job.write_options(threads=threads,
                                                                        allow_nonfinite=allow_nonfinite))
        return {"record": record, "node": label}
    except BitconvError as e:
        return {"error": error_record(e), "node": label}


def convert_split(source: str | os.PathLike[str], quant: str | None = None, out: str | os.PathLike[str] | None = None,
                  *, address: str = "auto", retries: int = 2, threads: int = 0, force: bool = False,
                  manifest: bool = True, allow_nonfinite: bool = False, **plan_options: Any) -> ConversionResult:
    """`api.convert(source, "gguf", quant, out, ...)` with each file of the (split) output written
    by a task of the Ray cluster at `address`; `plan_options`: `api.gguf_output`'s (target,
    split_max_size, split_max_tensors, kernel_config, …). `threads`: each task's threads and CPUs
    (0: 1). `retries`: attempts after a lost worker or node. The result is `convert`'s, each entry
    of `outputs` with the node that wrote it and its retries."""
    with connected(address) as ray:
        start = time.perf_counter()
        src = str(Path(source).resolve()) if Path(source).exists() else str(source)
        job: GGUFOutput = api.gguf_output(src, quant, out, **plan_options)
        job.out_path = job.out_path.resolve()
        cpus = threads or 1
        result = job.result(dry_run=False, threads=cpus)
        memory = result.memory_estimate_bytes
        if (why := unplaceable(nodes(ray), cpus, memory)) is not None:
            raise ClusterError(f"no node of the cluster can write a file of {job.out_path.name}: each task {why}")
        sidecars = job.prepare(result, force=force)
        stage = atomic.temp_path_for(job.out_path)
        atomic.remove_stale_temps(job.out_path.parent)
        stage.mkdir()
        hasher = job.hasher(manifest)
        n = job.splits.count
        task = remote(ray, _split_task)
        args = (src, quant, str(job.out_path), plan_options)
        try:
            def submit(i: int) -> Any:
                return task.options(num_cpus=cpus, memory=memory, max_retries=0, name=f"bitconv split {i + 1}/{n}"
                                    ).remote(*args, i, str(stage), job.fingerprint(), cpus, allow_nonfinite, __version__)

            outcomes = run_tasks(ray, submit, n, retries=retries, folders=[stage])
            for o in outcomes:
                if o.error is not None or o.cancelled:
                    raise _as_error(o.error or {"type": "ClusterError", "message": "a task was cancelled"})
                if "error" in o.value:
                    raise _as_error(o.value["error"])
            records = [o.value["record"] for o in outcomes]
            with atomic.staged_texts(sidecars) as commit_sidecars:
                commit_sidecars()  # as write_split_set: the kernel files first, a usable set always has them
                atomic.commit_staged([(stage / r["path"], job.out_path.parent / r["path"]) for r in records],
                                     force=force)
        except BaseException:
            if hasher:
                hasher.cancel()
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        result = job.finish(result, records, sidecars, hasher, threads=cpus, allow_nonfinite=allow_nonfinite)
        for planned, o in zip(result.outputs, outcomes):
            planned.update(node=o.value["node"], retries=o.retries)
        used = sorted({o.value["node"] for o in outcomes})
        result.notes.append(f"{n} file(s) written by Ray tasks on {len(used)} node(s) of the cluster at {address}"
                            + (f"; {sum(o.retries for o in outcomes)} retried after a lost worker or node"
                               if any(o.retries for o in outcomes) else ""))
        result.seconds = time.perf_counter() - start
        return result
