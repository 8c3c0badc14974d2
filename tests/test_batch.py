"""`bitconv batch`: several conversions from one TOML file, one report, exit 3 when a job fails,
unchanged outputs skipped (same inputs, options and bitconv version), bad files refused up front."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import run_cli

pytest.importorskip("onnx")


@pytest.fixture()
def workdir(qwen2_checkpoint: Path, tmp_path: Path) -> Path:
    shutil.copytree(qwen2_checkpoint, tmp_path / "qwen")
    return tmp_path


GOOD = """
[defaults]
validate = true

[[job]]
name = "gguf-q8"
source = "qwen"
quant = "q8_0"
output = "out/q.gguf"

[[job]]
name = "onnx-int8"
source = "qwen"
format = "onnx"
quant = "int8"
output = "out/onnx"
"""


def _batch(workdir: Path, text: str, *args: str) -> tuple[int, dict]:
    (workdir / "jobs.toml").write_text(text)
    proc = run_cli("batch", workdir / "jobs.toml", "--json", *args, timeout=600)
    doc = json.loads(proc.stdout)
    return proc.returncode, doc


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_jobs_run_validate_and_are_skipped_when_unchanged(workdir: Path) -> None:
    rc, doc = _batch(workdir, GOOD)
    assert rc == 0 and doc["ok"] is True, doc
    jobs = {j["name"]: j for j in doc["result"]["jobs"]}
    assert [j["status"] for j in jobs.values()] == ["ok", "ok"]
    assert jobs["gguf-q8"]["sha256"] == _sha(workdir / "out/q.gguf") and jobs["gguf-q8"]["quant"] == "q8_0"
    assert jobs["onnx-int8"]["sha256"] == _sha(workdir / "out/onnx/model.onnx.data")
    assert all(j["validation"]["passed"] for j in jobs.values())
    assert (workdir / "out/q.gguf.manifest.json").is_file() and (workdir / "out/onnx/bitconv-manifest.json").is_file()

    rc, doc = _batch(workdir, GOOD)  # nothing changed: both skipped, same hashes
    assert rc == 0 and [j["status"] for j in doc["result"]["jobs"]] == ["skipped", "skipped"]
    assert doc["result"]["jobs"][0]["sha256"] == jobs["gguf-q8"]["sha256"]

    cfg = json.loads((workdir / "qwen/config.json").read_text())  # an input changes: that checkpoint's jobs rerun
    cfg["bitconv_test_note"] = "changed"
    (workdir / "qwen/config.json").write_text(json.dumps(cfg))
    rc, doc = _batch(workdir, GOOD.replace("validate = true", "validate = false"))
    assert rc == 0 and [j["status"] for j in doc["result"]["jobs"]] == ["ok", "ok"]

    rc, doc = _batch(workdir, GOOD.replace('quant = "q8_0"', 'quant = "q4_k_m"'))  # an option changes
    assert [j["status"] for j in doc["result"]["jobs"]] == ["ok", "skipped"]
    assert doc["result"]["jobs"][0]["quant"] == "q4_k_m"  # llama-quantize's mix, from a batch file too

    rc, doc = _batch(workdir, GOOD, "--force")
    assert [j["status"] for j in doc["result"]["jobs"]] == ["ok", "ok"]


def test_a_failed_job_does_not_stop_the_others_unless_fail_fast(workdir: Path) -> None:
    text = GOOD.replace("validate = true", "validate = false") + """
[[job]]
name = "last"
source = "qwen"
quant = "f16"
output = "out/last.gguf"
"""
    bad = text.replace('name = "onnx-int8"\nsource = "qwen"\nformat = "onnx"\nquant = "int8"',
                       'name = "onnx-int8"\nsource = "qwen"\nformat = "onnx"\nquant = "int2"')
    rc, doc = _batch(workdir, bad)
    assert rc == 3 and doc["ok"] is False
    status = {j["name"]: j["status"] for j in doc["result"]["jobs"]}
    assert status == {"gguf-q8": "ok", "onnx-int8": "failed", "last": "ok"}
    failed = doc["result"]["jobs"][1]
    assert failed["error"]["exit_code"] == 2 and "ternary" in failed["error"]["message"]
    assert not (workdir / "out/onnx").exists()

    rc, doc = _batch(workdir, bad, "--fail-fast", "--force")
    assert rc == 3 and [j["status"] for j in doc["result"]["jobs"]] == ["ok", "failed", "not run"]


def test_an_output_bitconv_did_not_write_is_not_overwritten(workdir: Path) -> None:
    (workdir / "out").mkdir()
    (workdir / "out/q.gguf").write_bytes(b"someone else's file")
    rc, doc = _batch(workdir, GOOD.replace("validate = true", "validate = false"))
    assert rc == 3
    job = doc["result"]["jobs"][0]
    assert job["status"] == "failed" and "already exists" in job["error"]["message"]
    assert (workdir / "out/q.gguf").read_bytes() == b"someone else's file"


@pytest.mark.parametrize("text,phrases", [
    ("[[job]]\nsource = 'qwen'\noutput = 'x.gguf'\nquant = \n", ["not valid TOML", "line 4"]),
    ("[[job]]\nsource = 'qwen'\noutput = 'x.gguf'\nquantt = 'q8_0'\n", ["job 1", "quantt", "allowed:"]),
    ("[[job]]\nsource = 'qwen'\noutput = 'x'\nformat = 'tflite'\n", ["format 'tflite'", "gguf, onnx"]),
    ("[[job]]\noutput = 'x.gguf'\n", ["job 1", "'source'"]),
    ("[defaults]\nvalidate = true\n", ["no [[job]]"]),
    ("[[job]]\nsource = 'qwen'\noutput = 'a.gguf'\n[[job]]\nsource = 'qwen'\noutput = 'a.gguf'\n", ["job 2", "also job"]),
])
def test_bad_job_files_fail_before_anything_runs(workdir: Path, text: str, phrases: list[str]) -> None:
    (workdir / "jobs.toml").write_text(text)
    proc = run_cli("batch", workdir / "jobs.toml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    for p in phrases:
        assert p in proc.stderr, proc.stderr
    assert not list(workdir.glob("*.gguf"))


def test_safetensors_job_writes_a_manifest_and_is_skipped_when_unchanged(workdir: Path) -> None:
    text = """
[[job]]
name = "ct-int8"
source = "qwen"
format = "compressed-tensors"
quant = "int8"
block_size = 32
output = "out/ct"
validate = true
"""
    rc, doc = _batch(workdir, text)
    assert rc == 0 and doc["ok"] is True, doc
    job = doc["result"]["jobs"][0]
    assert job["status"] == "ok" and job["quant"] == "int8" and job["validation"]["passed"] is True
    assert job["sha256"] == _sha(workdir / "out/ct/model.safetensors")
    manifest = json.loads((workdir / "out/ct/bitconv-manifest.json").read_text())
    assert manifest["options"]["format"] == "compressed-tensors" and manifest["options"]["block_size"] == 32
    assert {r["path"] for r in manifest["outputs"]} >= {"model.safetensors", "config.json"}
    rc, doc = _batch(workdir, text)
    assert rc == 0 and doc["result"]["jobs"][0]["status"] == "skipped"
    rc, doc = _batch(workdir, text.replace('quant = "int8"', 'quant = "int4"'))
    assert rc == 0 and doc["result"]["jobs"][0]["status"] == "ok" and doc["result"]["jobs"][0]["quant"] == "int4"
