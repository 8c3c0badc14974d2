"""Running bitconv's work as tasks of a Ray cluster (the optional `ray` extra), shared by the batch
executor (ray_batch.py) and the split run (ray_split.py): connecting, what every task checks on its
node, retries after a lost worker or node, Ctrl-C, and the sweep of temp files a killed worker left.

Tensors never travel through Ray: tasks read sources and write outputs on storage every node
mounts, and return only small records (paths, sizes, hashes). Application errors (a bad option, a
missing file) come back as values and are never retried; a lost worker or node is retried, counted
by the driver (Ray does not tell the caller which attempt ran), up to `retries` times.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ._version import __version__
from .errors import BitconvError, Interrupted, UsageError
from .formats import atomic

INSTALL_HINT = "pip install 'bitconv[ray]'"
#: seconds to reach the cluster's head before ray.init (which retries a dead address for minutes)
CONNECT_TIMEOUT = 10.0
#: seconds a cancelled task gets to remove its temp files (KeyboardInterrupt) before it is killed.
#: Under load a running conversion was seen to finish inside a 10 s grace (the interrupt reaches the
#: worker late), leaving an output the user had cancelled; a killed worker's temps are swept from
#: every node afterwards (`sweep`), so a short grace loses nothing
CANCEL_GRACE = 2.0
_REMOTE: dict[Callable[..., Any], Any] = {}


class NodePathError(UsageError):
    """A source or output folder a task needs is not there on the node it runs on."""


class ClusterError(BitconvError):
    """A task was lost (worker or node) more often than the retries allow, or cannot be placed."""

    exit_code = 1


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("…" if len(text) > 300 else "")


def _head(ray: Any, address: str) -> tuple[str, int] | None:
    """The head's host and port for `address` (auto: RAY_ADDRESS or the cluster this machine started)."""
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or ""
        except Exception:  # noqa: BLE001 - a private helper; ray.init says what it finds
            return None
        if not address:
            raise UsageError("--ray auto: no running Ray cluster found on this machine (start one with `ray start "
                             "--head`, or give its address: --ray HOST:6379 or --ray ray://HOST:10001)")
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--ray {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


@contextmanager
def connected(address: str) -> Iterator[Any]:
    """Ray, connected to the cluster at `address` for the block (a session the caller already
    opened is used as it is). An address that does not answer is a one-line error in seconds."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    head = _head(ray, address)
    if head is not None:
        try:
            socket.create_connection(head, timeout=CONNECT_TIMEOUT).close()
        except OSError as e:
            raise UsageError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None
    with _errors_to_logging():
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as e:  # noqa: BLE001 - whatever Ray raises here, the cluster cannot be used
            raise UsageError(f"cannot connect to the Ray cluster at {address}: {_one_line(e)}") from None
        try:
            yield ray
        finally:
            ray.shutdown()


@contextmanager
def _errors_to_logging() -> Iterator[None]:
    """The driver's Ray prints the cluster's error messages ("a worker died …") on stdout from a
    thread of its own; bitconv never prints (and `--json` stdout is one object): while connected,
    they go to the "ray" logger instead (shown with --debug; the report has the lost attempts)."""
    try:
        from ray._private import worker
    except ImportError:  # another layout: nothing to redirect
        yield
        return
    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None:
        yield
        return
    log = logging.getLogger("ray")

    def to_logging(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        for line in data.get("lines", []):
            log.warning("(%s) %s", data.get("pid", "ray"), line)

    worker.print_to_stdstream = to_logging
    try:
        yield
    finally:
        worker.print_to_stdstream = printer


def remote(ray: Any, fn: Callable[..., Any]) -> Any:
    """`ray.remote(fn)`, made once per process (the function is pickled by reference: every node
    imports it from its own bitconv)."""
    if fn not in _REMOTE:
        _REMOTE[fn] = ray.remote(fn)
    return _REMOTE[fn]


# --- inside a task, on its node ---------------------------------------------------------------------

def node_setup(driver_version: str) -> str:
    """First thing in every task: tag this worker's temp names with its node, check the node runs
    the driver's bitconv; returns the node's label ("<ip> <node id prefix>")."""
    import ray

    ctx = ray.get_runtime_context()
    node_id = ctx.get_node_id()
    atomic.set_temp_node(node_id[:12])
    label = f"{ray.util.get_node_ip_address()} {node_id[:8]}"
    if driver_version != __version__:
        raise UsageError(f"node {label} runs bitconv {__version__}, the driver {driver_version}: install the same "
                         "version on every node")
    return label


def check_paths(label: str, sources: list[str], folders: list[Path]) -> None:
    """The task's sources (local paths; a hub repo id is not one) and output folders exist on this
    node: every node must mount the storage they are on."""
    for s in sources:
        if Path(s).expanduser().is_absolute() and not Path(s).expanduser().exists():
            raise NodePathError(f"node {label}: source {s} does not exist there; sources and outputs must be on "
                                "storage every node mounts")
    for folder in folders:
        if not folder.is_dir():
            raise NodePathError(f"node {label}: output folder {folder} does not exist there; sources and outputs "
                                "must be on storage every node mounts")
        if not os.access(folder, os.W_OK):
            raise NodePathError(f"node {label}: output folder {folder} is not writable there")


def error_record(e: BitconvError) -> dict[str, Any]:
    return {"type": type(e).__name__, "message": " ".join(str(e).split("\n")), "exit_code": e.exit_code}


def _sweep_task(folders: list[str], driver_version: str) -> list[str]:
    """On one node: remove the temps its dead workers left in `folders`."""
    node_setup(driver_version)
    return [str(p) for f in folders for p in atomic.remove_stale_temps(Path(f))]


# --- on the driver ------------------------------------------------------------------------------------

def nodes(ray: Any) -> list[dict[str, Any]]:
    """The cluster's live nodes: id, label, CPUs and memory."""
    return [{"id": n["NodeID"], "label": f"{n['NodeManagerAddress']} {n['NodeID'][:8]}",
             "cpus": n["Resources"].get("CPU", 0), "memory": n["Resources"].get("memory", 0)}
            for n in ray.nodes() if n.get("Alive")]


def unplaceable(live: list[dict[str, Any]], cpus: int, memory: int | None) -> str | None:
    """Why no node can ever run a task asking for `cpus` and `memory` (None: some node can)."""
    if any(n["cpus"] >= cpus and (memory is None or n["memory"] >= memory) for n in live):
        return None
    best = max(live, key=lambda n: (n["cpus"], n["memory"]), default=None)
    offer = f"the largest node offers {best['cpus']:g} CPUs and {best['memory'] / 2**30:.1f} GiB" if best else \
        "the cluster has no live node"
    need = f"{cpus} CPUs" + (f" and {memory / 2**30:.1f} GiB of memory (the plan's estimate)" if memory else "")
    return f"needs {need}; {offer}"


@dataclass
class Outcome:
    """What became of one unit of work (a job, a split): its task's return value, or why it has none."""

    value: Any = None
    error: dict[str, Any] | None = None
    retries: int = 0
    lost: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False


def _lost_types(ray: Any) -> tuple[type, ...]:
    x = ray.exceptions
    return (x.WorkerCrashedError, x.NodeDiedError, x.LocalRayletDiedError, x.ObjectLostError, x.RaySystemError,
            x.OutOfMemoryError)


def run_tasks(ray: Any, submit: Callable[[int], Any], n: int, *, retries: int, folders: list[Path],
              on_done: Callable[[int, Outcome], bool] | None = None) -> list[Outcome]:
    """Submit `submit(i)` for i < n and collect the outcomes; a task lost with its worker or node is
    submitted again (at most `retries` times). `on_done(i, outcome)` returning True cancels what is
    still pending (its outcomes: cancelled). Ctrl-C cancels everything, sweeps and raises
    Interrupted. Temps left by lost or killed workers are swept from `folders` on every node."""
    lost_types = _lost_types(ray)
    pending: dict[Any, tuple[int, int]] = {}
    outcomes: list[Outcome | None] = [None] * n
    lost: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    dirty = False
    try:
        for i in range(n):
            pending[submit(i)] = (i, 0)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                i, attempt = pending.pop(ref)
                try:
                    outcome = Outcome(value=ray.get(ref), retries=attempt, lost=lost[i])
                except lost_types as e:
                    dirty = True
                    lost[i].append({"attempt": attempt + 1, "error": f"{type(e).__name__}: {_one_line(e)}"})
                    if attempt < retries:
                        pending[submit(i)] = (i, attempt + 1)
                        continue
                    outcome = Outcome(error={"type": "ClusterError", "exit_code": ClusterError.exit_code,
                                             "message": f"lost {attempt + 1} time(s), no retries left: "
                                                        f"{lost[i][-1]['error']}"}, retries=attempt, lost=lost[i])
                except ray.exceptions.TaskCancelledError:
                    outcome = Outcome(cancelled=True, retries=attempt, lost=lost[i])
                except ray.exceptions.RayTaskError as e:  # a bug in the task (BitconvErrors come back as values)
                    outcome = Outcome(error={"type": "InternalError", "exit_code": 1,
                                             "message": f"internal error on the cluster: {_one_line(e.cause or e)}"},
                                      retries=attempt, lost=lost[i])
                outcomes[i] = outcome
                if on_done is not None and on_done(i, outcome) and pending:
                    dirty = True
                    for j, _ in _cancel(ray, pending):
                        outcomes[j] = Outcome(cancelled=True, lost=lost[j])
                    pending.clear()
    except KeyboardInterrupt:
        _cancel(ray, pending)
        sweep(ray, folders)
        raise Interrupted("interrupted: the cluster's tasks were cancelled and their temp files removed; outputs "
                          "that were complete before stay, nothing partial was written") from None
    if dirty:
        sweep(ray, folders)
    return [o or Outcome(cancelled=True) for o in outcomes]


def _cancel(ray: Any, pending: dict[Any, tuple[int, int]]) -> list[tuple[int, int]]:
    """Cancel tasks: a running one gets KeyboardInterrupt (its writer removes its temp files), and
    is killed if it has not ended after CANCEL_GRACE seconds."""
    refs = list(pending)
    for ref in refs:
        ray.cancel(ref, force=False)
    deadline = time.monotonic() + CANCEL_GRACE
    left = refs
    while left and time.monotonic() < deadline:
        _, left = ray.wait(left, num_returns=len(left), timeout=0.5)
    for ref in left:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - already ended meanwhile
            pass
    return [pending[r] for r in refs]


def sweep(ray: Any, folders: list[Path], timeout: float = 15.0) -> list[str]:
    """Remove the temp files that killed or lost workers left in `folders`: a task on every live
    node removes those of its own dead processes; the driver removes those of nodes that are gone,
    or that did not answer within `timeout` (a node just lost can still be listed alive; every task
    of this run has ended by now, so no write of it is cut short)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    names = sorted({str(f) for f in folders})
    task = remote(ray, _sweep_task)
    refs = {n["NodeID"]: task.options(num_cpus=0, max_retries=0, name="bitconv sweep",
                                      scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                                      ).remote(names, __version__) for n in ray.nodes() if n.get("Alive")}
    removed: list[str] = []
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    answered = set()
    for node_id, ref in refs.items():
        if ref in ready:
            try:
                removed += ray.get(ref)
                answered.add(node_id)
            except Exception:  # noqa: BLE001 - the node went away meanwhile
                pass
        else:
            ray.cancel(ref, force=True)
    gone = frozenset(n["NodeID"][:12] for n in ray.nodes() if n["NodeID"] not in answered)
    removed += [str(p) for f in names for p in atomic.remove_stale_temps(Path(f), dead_nodes=gone)]
    return removed
