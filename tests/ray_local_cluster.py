"""A real Ray cluster of two nodes on this machine, for tests/test_ray.py and benchmarks/distributed.py.

Each node is its own `ray start --block` (one CPU each, usage stats off, a small object store: no
tensor goes through it) in its own process group; stopping it ends those groups — only what it
started. The nodes listen on 127.0.0.2: Ray replaces 127.0.0.1 by the machine's outward address,
and the traffic of a test stays on the loopback range. Ray's session files go under `root`.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.2"
REPO = Path(__file__).resolve().parents[1]


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def node_env() -> dict[str, str]:
    """The nodes' environment: this checkout's bitconv first on the path (every worker imports it)."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _descendants(roots: set[int]) -> set[int]:
    """The live processes below `roots` (not the roots), from /proc."""
    parent = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parent[int(pid)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in found]
        found.update(kids)
        todo += kids
    return found


class LocalCluster:
    def __init__(self, root: Path, nodes: int = 2, cpus: int = 1) -> None:
        self.root, self.n_nodes, self.cpus = Path(root), nodes, cpus
        self.port = _free_port()
        self.address = f"{HOST}:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.orphans: set[int] = set()

    def _start_node(self, i: int) -> None:
        cmd = [sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--block",
               "--node-ip-address", HOST, "--num-cpus", str(self.cpus), "--disable-usage-stats",
               "--object-store-memory", str(80 * 2**20), "--dashboard-agent-listen-port", str(_free_port()),
               "--resources", f'{{"bitconv_test_node_{i}": 1}}']
        if i == 0:
            cmd += ["--head", "--port", str(self.port), "--temp-dir", str(self.root / "ray"),
                    "--include-dashboard", "false"]
        else:
            cmd += ["--address", self.address]
        log = open(self.root / f"node{i}.log", "wb")
        self.procs.append(subprocess.Popen(cmd, env=node_env(), stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True))

    def start(self, timeout: float = 120) -> "LocalCluster":
        import ray

        self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        self._start_node(0)
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.procs[0].poll() is not None:
                    self.stop()
                    raise RuntimeError(f"the Ray head did not start: {self.log(0)[-2000:]}")
                time.sleep(0.2)
        for i in range(1, self.n_nodes):
            self._start_node(i)
        ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
        try:
            while len([n for n in ray.nodes() if n["Alive"]]) < self.n_nodes:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.n_nodes} Ray nodes did not come up: {self.log(1)[-2000:]}")
                time.sleep(0.2)
            alive = [n for n in ray.nodes() if n["Alive"]]
            #: node i's id (node i carries the resource bitconv_test_node_<i>)
            self.node_ids_by_index = [next(n["NodeID"] for n in alive if f"bitconv_test_node_{i}" in n["Resources"])
                                      for i in range(self.n_nodes)]
        finally:
            ray.shutdown()
        return self

    def log(self, i: int) -> str:
        try:
            return (self.root / f"node{i}.log").read_text(errors="replace")
        except OSError:
            return ""

    def kill_node(self, i: int) -> None:
        """Node i dies at once: SIGKILL to its process group (its raylet and agents); its workers, in
        process groups of their own, see their raylet gone and exit (an orphan is killed at stop())."""
        self.orphans |= _descendants({self.procs[i].pid})
        os.killpg(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait()

    def stop(self) -> None:
        """End the nodes' process groups (TERM, then KILL after 3 s): every Ray process of this cluster."""
        workers = _descendants({p.pid for p in self.procs}) | self.orphans  # Ray's workers: own process groups
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        for p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        for pid in workers:  # still there after their raylet is gone: end them too, by their ids
            try:
                if Path(f"/proc/{pid}/comm").read_text().startswith("ray::"):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        self.procs.clear()
        self.orphans = set()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
