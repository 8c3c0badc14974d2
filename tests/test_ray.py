"""Batch conversions and one model's split set across a real Ray cluster: two nodes of one CPU each on
127.0.0.2 (tests/ray_local_cluster.py), started once for this module. The outputs are the local
executor's bytes, the jobs land on both nodes, a worker SIGKILLed mid-job is retried, Ctrl-C
cancels, and no temp file is left anywhere; without Ray, an unreachable address or a missing
source, `--ray` is one line and exit 2."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from cli_helpers import cli_env, error_line, json_result, run_cli, sigint_as_in_a_terminal
from ray_local_cluster import HOST, LocalCluster, ray_available

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if not ray_available():
        from llamacpp_oracle import skip_or_fail

        if sys.version_info >= (3, 14):  # the test extra installs ray only where it has wheels
            pytest.skip("ray is not installed")
        skip_or_fail("ray is not installed (pip install -e '.[test]' installs it)")
    root = Path(tempfile.mkdtemp(prefix="bcray"))  # short: Ray's socket paths live under it
    c = LocalCluster(root)
    try:
        yield c.start()
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path; a manifest without its thread count (Ray runs a job
    on its CPUs, the local run on all cores: the artifact bytes never depend on it)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name.endswith("manifest.json"):
                doc = json.loads(data)
                doc["options"].pop("threads", None)
                data = json.dumps(doc, sort_keys=True).encode()
            out[str(p.relative_to(folder))] = data
    return out


def _temps(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".bitconv-tmp." in p.name)


JOBS = """
[[job]]
name = "gguf-q8"
source = "{src}"
quant = "q8_0"
output = "{out}/q8.gguf"

[[job]]
name = "onnx-int4"
source = "{src}"
format = "onnx"
quant = "int4"
output = "{out}/onnx"

[[job]]
name = "ct-int8"
source = "{src}"
format = "compressed-tensors"
quant = "int8"
block_size = 32
output = "{out}/ct"

[[job]]
name = "gguf-q4km"
source = "{src}"
quant = "q4_k_m"
output = "{out}/q4.gguf"

[[job]]
name = "not-ternary"
source = "{src}"
format = "onnx"
quant = "int2"
output = "{out}/int2"
"""


def _batch(toml: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = run_cli("batch", toml, "--json", *args, timeout=300)
    return proc.returncode, json_result(proc)["result"]


def test_mixed_batch_lands_on_both_nodes_with_the_local_bytes(cluster: LocalCluster, qwen2_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    for run in ("local", "ray"):
        (tmp_path / f"{run}.toml").write_text(JOBS.format(src=qwen2_checkpoint, out=run))
    rc_local, local = _batch(tmp_path / "local.toml")
    rc, doc = _batch(tmp_path / "ray.toml", "--ray", cluster.address)
    assert rc == rc_local == 3  # the int2 job fails the same way under both executors; the others finish
    assert [j["status"] for j in doc["jobs"]] == [j["status"] for j in local["jobs"]] == ["ok"] * 4 + ["failed"]
    assert doc["jobs"][-1]["error"] == local["jobs"][-1]["error"]
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    assert [j["sha256"] for j in doc["jobs"]] == [j["sha256"] for j in local["jobs"]]
    assert "node" not in local["jobs"][0] and "executor" not in local  # the local report is unchanged
    assert doc["executor"] == "ray" and len(doc["cluster"]["nodes"]) == 2
    assert len({j["node"] for j in doc["jobs"]}) == 2, [j["node"] for j in doc["jobs"]]
    assert all(j["retries"] == 0 for j in doc["jobs"])

    # skip-unchanged, from the [run] table this time: nothing is redone
    (tmp_path / "ray.toml").write_text(f'[run]\nexecutor = "ray"\naddress = "{cluster.address}"\n'
                                       + JOBS.format(src=qwen2_checkpoint, out="ray"))
    rc, again = _batch(tmp_path / "ray.toml")
    assert rc == 3 and [j["status"] for j in again["jobs"]] == ["skipped"] * 4 + ["failed"]
    rc, ff = _batch(tmp_path / "ray.toml", "--fail-fast", "--force")
    assert rc == 3 and "failed" in [j["status"] for j in ff["jobs"]]
    assert _temps(tmp_path) == []


def test_split_set_spreads_over_both_nodes_and_llama_cpp_loads_it(cluster: LocalCluster,
                                                                  checkpoint_factory: Callable[..., Path],
                                                                  tmp_path: Path) -> None:
    moe = checkpoint_factory("qwen3moe", "bf16", 1, "hub")
    args = ("-q", "q8_0", "--split-max-tensors", "6", "--json")
    (tmp_path / "local").mkdir()
    local = run_cli("hf2gguf", moe, "-o", tmp_path / "local/m.gguf", *args, "--quiet")
    (tmp_path / "ray").mkdir()
    proc = run_cli("hf2gguf", moe, "-o", tmp_path / "ray/m.gguf", *args, "--ray", cluster.address, timeout=300)
    assert local.returncode == 0 and proc.returncode == 0, proc.stderr
    result = json_result(proc)["result"]
    assert len(result["outputs"]) >= 4
    assert len({o["node"] for o in result["outputs"]}) == 2, result["outputs"]
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")  # every file, and the set's one manifest
    manifest = json.loads((tmp_path / "ray/m.gguf.manifest.json").read_text())
    assert [o["path"] for o in manifest["outputs"]] == [Path(o["path"]).name for o in result["outputs"]]
    assert _temps(tmp_path) == []
    from runtimes import llama_last_logits

    import numpy as np

    logits = llama_last_logits(Path(result["output"]), [9707, 11, 1879, 0, 358])
    assert np.isfinite(logits).all()


def _wait_for_temp(folder: Path, proc: subprocess.Popen[str], timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in folder.glob(".*.bitconv-tmp.*") if "-" in p.name.rsplit(".", 1)[-1]]
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("no job started writing")


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_retried(cluster: LocalCluster, checkpoint_factory: Callable[..., Path],
                                            tmp_path: Path) -> None:
    from bitconv import convert
    from bitconv.formats.atomic import temp_owner_of

    big = checkpoint_factory("qwen2", "bf16", 1, "hub", hidden=1024)  # a few seconds to convert: time to kill it
    convert(big, "gguf", "q4_k_m", tmp_path / "expected.gguf", threads=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "jobs.toml").write_text(f'[[job]]\nname = "big"\nsource = "{big}"\nquant = "q4_k_m"\n'
                                        f'output = "out/big.gguf"\n')
    proc = subprocess.Popen([sys.executable, "-m", "bitconv", "batch", str(tmp_path / "jobs.toml"), "--json",
                             "--ray", cluster.address], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    temp = _wait_for_temp(tmp_path / "out", proc)
    owner = temp_owner_of(temp.name)
    assert owner is not None and owner[0] is not None
    os.kill(owner[1], signal.SIGKILL)  # the Ray worker running the job
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    job = json.loads(stdout)["result"]["jobs"][0]
    assert job["status"] == "ok" and job["retries"] == 1 and "WorkerCrashedError" in job["lost_attempts"][0]["error"]
    assert (tmp_path / "out/big.gguf").read_bytes() == (tmp_path / "expected.gguf").read_bytes()
    assert _temps(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_cancels_the_tasks_and_leaves_no_temp_files(cluster: LocalCluster,
                                                            checkpoint_factory: Callable[..., Path],
                                                            tmp_path: Path) -> None:
    big = checkpoint_factory("qwen2", "bf16", 1, "hub", hidden=1024)
    (tmp_path / "jobs.toml").write_text("".join(f'[[job]]\nname = "j{i}"\nsource = "{big}"\nquant = "q4_k_m"\n'
                                                f'output = "out/j{i}.gguf"\n' for i in range(3)))
    (tmp_path / "out").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "bitconv", "batch", str(tmp_path / "jobs.toml"),
                             "--ray", cluster.address], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal)
    _wait_for_temp(tmp_path / "out", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "cancelled" in error_line(subprocess.CompletedProcess([], 130, "", stderr))
    assert _temps(tmp_path) == [] and not list((tmp_path / "out").glob("*.gguf"))


# --- one line, exit 2, nothing written ----------------------------------------------------------------

def _no_ray_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import ray` fails, as where the extra is not installed."""
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    return cli_env(PYTHONPATH=os.pathsep.join([str(fake.parent)] + [p for p in sys.path if p]))


def _jobs(tmp_path: Path, source: Path | str) -> Path:
    (tmp_path / "jobs.toml").write_text(f'[[job]]\nsource = "{source}"\nquant = "q8_0"\noutput = "out/q.gguf"\n')
    return tmp_path / "jobs.toml"


def test_ray_without_ray_installed(qwen2_checkpoint: Path, tmp_path: Path) -> None:
    env = _no_ray_env(tmp_path)
    for args in (("batch", _jobs(tmp_path, qwen2_checkpoint), "--ray", "auto"),
                 ("hf2gguf", qwen2_checkpoint, "-o", tmp_path / "q.gguf", "--ray", "auto")):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2
        assert "pip install 'bitconv[ray]'" in error_line(proc)
    assert not (tmp_path / "out").exists() and not (tmp_path / "q.gguf").exists()


def test_unreachable_address(qwen2_checkpoint: Path, tmp_path: Path) -> None:
    if not ray_available():
        pytest.skip("ray is not installed")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind((HOST, 0))
        address = f"{HOST}:{s.getsockname()[1]}"
    start = time.monotonic()
    for args in (("batch", _jobs(tmp_path, qwen2_checkpoint), "--ray", address),
                 ("hf2gguf", qwen2_checkpoint, "-o", tmp_path / "q.gguf", "--ray", address)):
        proc = run_cli(*args)
        assert proc.returncode == 2
        assert f"cannot reach the Ray cluster at {address}" in error_line(proc)
    assert time.monotonic() - start < 60
    assert not (tmp_path / "out").exists() and not (tmp_path / "q.gguf").exists()


def test_missing_source(cluster: LocalCluster, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    proc = run_cli("hf2gguf", missing, "-o", tmp_path / "q.gguf", "--ray", cluster.address)
    assert proc.returncode == 2 and str(missing) in error_line(proc)
    assert not (tmp_path / "q.gguf").exists()
    # in a batch it is that job's error, named with the node that found it (exit 3, as a failed job locally)
    rc, doc = _batch(_jobs(tmp_path, missing), "--ray", cluster.address)
    job = doc["jobs"][0]
    assert rc == 3 and job["status"] == "failed" and job["error"]["exit_code"] == 2
    assert f"source {missing} does not exist there" in job["error"]["message"]
    assert job["error"]["message"].startswith(f"node {HOST} ")
    assert not list((tmp_path / "out").glob("*"))


@pytest.mark.parametrize("run,phrase", [("executor = 'slurm'", "executor 'slurm' is not one of local, ray"),
                                        ("retries = -1", "retries must not be negative"),
                                        ("adress = 'auto'", "unknown key 'adress'"),
                                        ("retries = 'two'", "retries must be an integer")])
def test_bad_run_table(qwen2_checkpoint: Path, tmp_path: Path, run: str, phrase: str) -> None:
    (tmp_path / "jobs.toml").write_text(f"[run]\n{run}\n" + _jobs(tmp_path, qwen2_checkpoint).read_text())
    proc = run_cli("batch", tmp_path / "jobs.toml")
    assert proc.returncode == 2 and phrase in error_line(proc)


def test_example_zoo_file_parses() -> None:
    from bitconv.jobs import load_batch

    jobs, run = load_batch(Path(__file__).resolve().parents[1] / "examples/ray/zoo.toml")
    assert run == {"executor": "ray", "address": "auto", "retries": 2} and len(jobs) == 5
    assert jobs[-1].options["threads"] == 8

@pytest.mark.slow
def test_a_lost_node_is_retried_on_another(cluster: LocalCluster, checkpoint_factory: Callable[..., Path],
                                           tmp_path: Path) -> None:
    """The second node dies mid-job (its raylet and workers killed): the job runs again on the head
    node, with the same bytes, and the dead node's temp file is removed. Last in the module: the
    cluster has one node afterwards."""
    from bitconv import convert

    # long enough to be killed mid-job (the AVX2 k-quant searches encode q4_k ~90 M values/s per core)
    big = checkpoint_factory("qwen2", "bf16", 1, "hub", hidden=1024)
    convert(big, "gguf", "q4_k_m", tmp_path / "expected.gguf", threads=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "jobs.toml").write_text("".join(f'[[job]]\nname = "j{i}"\nsource = "{big}"\nquant = "q4_k_m"\n'
                                                f'output = "out/j{i}.gguf"\n' for i in range(2)))
    proc = subprocess.Popen([sys.executable, "-m", "bitconv", "batch", str(tmp_path / "jobs.toml"), "--json",
                             "--ray", cluster.address], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    worker_node = cluster.node_ids_by_index[1][:12]
    deadline = time.monotonic() + 60
    while not any(worker_node in p.name for p in (tmp_path / "out").glob(".*.bitconv-tmp.*")):
        assert time.monotonic() < deadline and proc.poll() is None, "no job started writing on the second node"
        time.sleep(0.01)
    cluster.kill_node(1)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    jobs = json.loads(stdout)["result"]["jobs"]
    lost = [j for j in jobs if j["retries"]]
    assert len(lost) == 1 and "NodeDiedError" in lost[0]["lost_attempts"][0]["error"]
    assert not lost[0]["node"].endswith(worker_node[:8])
    for j in jobs:
        assert (tmp_path / "out" / f"{j['name']}.gguf").read_bytes() == (tmp_path / "expected.gguf").read_bytes()
    assert _temps(tmp_path) == []
