"""The `bitconv` command line as users run it: version, quants, hf2gguf (output naming, --json,
--dry-run, determinism, the manifest) and inspect. Every command runs as a real subprocess."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import bitconv
from bitconv.quant.registry import all_quantizers
from cli_helpers import assert_no_temps, clone_checkpoint, json_result, run_cli


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ok_json(proc: Any, command: str) -> Any:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    obj = json_result(proc)
    assert obj["ok"] is True and obj["command"] == command
    assert set(obj) == {"ok", "command", "result"}
    return obj["result"]


@pytest.fixture(scope="module")
def converted(qwen2_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One f16 conversion with --json, shared by the tests that read its artifact."""
    out_dir = tmp_path_factory.mktemp("cli-out")
    result = ok_json(run_cli("hf2gguf", qwen2_checkpoint, "-o", out_dir / "model.gguf", "--json"), "hf2gguf")
    return result, out_dir / "model.gguf"


# --- version, quants ----------------------------------------------------------------------------

def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"bitconv, version {bitconv.__version__}"


def test_help_lists_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("hf2gguf", "inspect", "quants"):
        assert cmd in proc.stdout


def test_quants_text() -> None:
    proc = run_cli("quants")
    assert proc.returncode == 0, proc.stderr
    for q in all_quantizers():
        assert q.name in proc.stdout
    assert "llama.cpp" in proc.stdout


def test_quants_json() -> None:
    rows = ok_json(run_cli("quants", "--json"), "quants")
    assert [r["name"] for r in rows] == [q.name for q in all_quantizers()]
    by_name = {r["name"]: r for r in rows}
    assert {"f32", "f16", "bf16", "q8_0", "q4_0"} <= set(by_name)
    assert by_name["f32"]["bits_per_weight"] == 32 and by_name["f16"]["bits_per_weight"] == 16
    assert by_name["q8_0"]["bits_per_weight"] == 8.5 and by_name["q8_0"]["block_size"] == 32
    assert by_name["q4_0"]["bits_per_weight"] == 4.5 and by_name["q4_0"]["llama_quantize_rules"]
    assert by_name["q4_k_m"]["file_bits_per_weight_qwen2.5_1.5b"] > by_name["q4_k_m"]["bits_per_weight"]
    assert not by_name["q8_0"]["llama_quantize_rules"] and by_name["q8_0"]["file_bits_per_weight_qwen2.5_1.5b"] is None
    for r in rows:
        assert set(r) >= {"name", "bits_per_weight", "block_size", "runtimes", "embedding_type", "description"}
        assert r["runtimes"]
    assert all("llama.cpp" in by_name[n]["runtimes"] for n in ("f32", "f16", "bf16", "q8_0", "q4_0", "q5_1"))
    assert by_name["i2_s"]["bits_per_weight"] == 2 and by_name["i2_s"]["runtimes"] == ["bitnet.cpp (x86)"]


def test_unknown_command_is_usage_error() -> None:
    proc = run_cli("frobnicate")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_usage_error_json() -> None:
    proc = run_cli("hf2gguf", "--json")  # SOURCE missing
    assert proc.returncode == 2
    obj = json_result(proc)
    assert obj["ok"] is False and obj["command"] == "hf2gguf"
    assert obj["error"]["exit_code"] == 2 and "SOURCE" in obj["error"]["message"]
    assert "Traceback" not in proc.stderr


# --- hf2gguf: output naming ----------------------------------------------------------------------

def test_default_output_name_in_cwd(qwen2_checkpoint: Path, tmp_path: Path) -> None:
    proc = run_cli("hf2gguf", qwen2_checkpoint, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    name = f"{qwen2_checkpoint.name}-f16.gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, f"{name}.manifest.json"]
    assert (tmp_path / name).read_bytes()[:4] == b"GGUF"
    assert f"wrote {tmp_path / name}" in proc.stdout or name in proc.stdout


def test_dot_source_names_the_model(qwen2_checkpoint: Path, tmp_path: Path) -> None:
    """`bitconv hf2gguf .` inside the checkpoint: the folder's name, not "-f16.gguf" / an empty general.name."""
    d = clone_checkpoint(qwen2_checkpoint, tmp_path / "my-model")
    res = ok_json(run_cli("hf2gguf", ".", "--json", "--no-manifest", cwd=d), "hf2gguf")
    assert Path(res["output"]) == d / "my-model-f16.gguf"
    info = ok_json(run_cli("inspect", d / "my-model-f16.gguf", "--json"), "inspect")
    assert info["metadata"]["general.name"].lower().replace(" ", "-") == "my-model"  # gguf-py title-cases it


@pytest.mark.parametrize("trailing_slash", [True, False], ids=["DIR/", "existing-DIR"])
def test_output_folder(qwen2_checkpoint: Path, tmp_path: Path, trailing_slash: bool) -> None:
    out_dir = tmp_path / "outputs"
    out_dir.mkdir()
    arg = str(out_dir) + ("/" if trailing_slash else "")
    res = ok_json(run_cli("hf2gguf", qwen2_checkpoint, "-o", arg, "-q", "q8_0", "--json", "--no-manifest"),
                  "hf2gguf")
    expected = out_dir / f"{qwen2_checkpoint.name}-q8_0.gguf"
    assert res["output"] == str(expected)
    assert sorted(p.name for p in out_dir.iterdir()) == [expected.name]
    assert res["sha256"] == sha256(expected) and res["manifest"] is None


def test_output_folder_missing(qwen2_checkpoint: Path, tmp_path: Path) -> None:
    proc = run_cli("hf2gguf", qwen2_checkpoint, "-o", tmp_path / "nope" / "m.gguf", "--json")
    assert proc.returncode == 2
    obj = json_result(proc)
    assert obj["ok"] is False and "does not exist" in obj["error"]["message"]
    assert not (tmp_path / "nope").exists()


# --- hf2gguf --json, --dry-run --------------------------------------------------------------------

def test_json_result(converted: tuple[dict[str, Any], Path], qwen2_checkpoint: Path) -> None:
    res, out = converted
    assert res["output"] == str(out) and out.is_file()
    assert res["quant"] == "f16" and res["format"] == "gguf" and res["dry_run"] is False
    assert res["architecture"] == "Qwen2ForCausalLM"
    assert res["source"] == str(qwen2_checkpoint)
    assert res["sha256"] == sha256(out)
    assert res["output_bytes"] == out.stat().st_size
    assert res["manifest"] == str(out) + ".manifest.json" and Path(res["manifest"]).is_file()
    assert set(res["type_counts"]) == {"f16", "f32"} and sum(res["type_counts"].values()) == res["n_tensors"]
    assert "tensors" not in res  # the tensor list is a --dry-run thing
    assert_no_temps(out.parent)


def test_dry_run_writes_nothing(qwen2_checkpoint: Path, tmp_path: Path, converted: tuple[dict[str, Any], Path]) -> None:
    out = tmp_path / "model.gguf"
    plan = ok_json(run_cli("hf2gguf", qwen2_checkpoint, "-o", out, "--dry-run", "--json"), "hf2gguf")
    assert list(tmp_path.iterdir()) == []
    assert plan["dry_run"] is True and plan["sha256"] is None and plan["manifest"] is None
    assert plan["output"] == str(out)
    assert plan["memory_estimate_bytes"] > plan["largest_tensor_f32_bytes"] > 0
    tensors = plan["tensors"]
    assert len(tensors) == plan["n_tensors"] > 0
    for t in tensors:
        assert set(t) >= {"name", "shape", "type", "bytes", "source_dtype"}
        assert t["type"] in ("f16", "f32") and t["source_dtype"] == "BF16"
    assert sum(t["bytes"] for t in tensors) <= plan["output_bytes"]
    by_name = {t["name"]: t for t in tensors}
    assert by_name["token_embd.weight"]["type"] == "f16"
    assert by_name["output_norm.weight"]["type"] == "f32"
    # the plan is what the real conversion writes: same tensors, types, shapes and bytes, in order
    real = ok_json(run_cli("inspect", converted[1], "--json"), "inspect")
    assert [(t["name"], t["type"].lower(), t["shape"], t["bytes"]) for t in real["tensors"]] == \
           [(t["name"], t["type"], t["shape"], t["bytes"]) for t in tensors]
    assert plan["output_bytes"] >= converted[0]["output_bytes"]  # an upper bound (used for the disk check)


def test_dry_run_text(qwen2_checkpoint: Path, tmp_path: Path) -> None:
    proc = run_cli("hf2gguf", qwen2_checkpoint, "--dry-run", "-q", "q4_0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nothing written" in proc.stdout and "token_embd.weight" in proc.stdout and "q4_0" in proc.stdout
    assert list(tmp_path.iterdir()) == []


# --- inspect --------------------------------------------------------------------------------------

def test_inspect_json(converted: tuple[dict[str, Any], Path]) -> None:
    res, out = converted
    info = ok_json(run_cli("inspect", out, "--json"), "inspect")
    meta = info["metadata"]
    assert meta["general.architecture"] == "qwen2"
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "qwen2"
    assert meta["general.file_type"] == 1  # MOSTLY_F16
    assert meta["qwen2.block_count"] == 2
    assert isinstance(meta["tokenizer.ggml.tokens"], dict)  # 151936 tokens are summarized
    assert meta["tokenizer.ggml.tokens"]["length"] == 151936
    assert info["n_tensors"] == res["n_tensors"] == len(info["tensors"])
    assert info["n_params"] == res["n_params"]
    names = [t["name"] for t in info["tensors"]]
    assert "token_embd.weight" in names and "blk.1.attn_q.bias" in names
    emb = next(t for t in info["tensors"] if t["name"] == "token_embd.weight")
    assert emb["shape"] == [151936, 64] and emb["type"] == "F16" and emb["bytes"] == 151936 * 64 * 2


def test_inspect_text(converted: tuple[dict[str, Any], Path]) -> None:
    proc = run_cli("inspect", converted[1])
    assert proc.returncode == 0, proc.stderr
    for s in ("general.architecture", "qwen2", "tokenizer.ggml.pre", "token_embd.weight", "F16", "blk.0.attn_q.weight"):
        assert s in proc.stdout, s


def test_inspect_not_a_gguf(tmp_path: Path) -> None:
    f = tmp_path / "x.gguf"
    f.write_bytes(b"not a gguf at all, definitely not" * 4)
    proc = run_cli("inspect", f)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr
    proc = run_cli("inspect", tmp_path / "missing.gguf", "--json")
    assert proc.returncode == 2 and json_result(proc)["ok"] is False


# --- determinism ----------------------------------------------------------------------------------

@pytest.mark.parametrize("quant", ["f16", "q4_0"])
def test_deterministic_across_runs_and_threads(qwen2_checkpoint: Path, tmp_path: Path, quant: str) -> None:
    shas = []
    for threads in ("1", "2"):
        res = ok_json(run_cli("hf2gguf", qwen2_checkpoint, "-q", quant, "-o", tmp_path / f"t{threads}.gguf",
                              "--threads", threads, "--json"), "hf2gguf")
        assert res["sha256"] == sha256(tmp_path / f"t{threads}.gguf")
        shas.append(res["sha256"])
    assert shas[0] == shas[1], f"{quant}: --threads 1 and --threads 2 gave different bytes"
    # the manifests differ only in the output file name and the thread count they record
    m1, m2 = (json.loads((tmp_path / f"t{t}.gguf.manifest.json").read_text()) for t in ("1", "2"))
    assert (m1["options"].pop("threads"), m2["options"].pop("threads")) == (1, 2)
    m1["outputs"][0].pop("path"), m2["outputs"][0].pop("path")
    assert m1 == m2


def test_deterministic_default_threads(converted: tuple[dict[str, Any], Path], qwen2_checkpoint: Path,
                                       tmp_path: Path) -> None:
    res = ok_json(run_cli("hf2gguf", qwen2_checkpoint, "-o", tmp_path / "again.gguf", "--json", "--threads", "1"),
                  "hf2gguf")
    assert res["sha256"] == converted[0]["sha256"]


# --- manifest -------------------------------------------------------------------------------------

def test_manifest(converted: tuple[dict[str, Any], Path], qwen2_checkpoint: Path) -> None:
    res, out = converted
    manifest = json.loads(Path(res["manifest"]).read_text())
    assert manifest["bitconv_version"] == bitconv.__version__
    assert manifest["source"] == str(qwen2_checkpoint)
    opts = manifest["options"]
    assert opts["format"] == "gguf" and opts["quant"] == "f16" and opts["pre"] == "qwen2"
    assert opts["allow_nonfinite"] is False
    inputs = {i["path"]: i for i in manifest["inputs"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(inputs)
    for rel, rec in inputs.items():
        f = qwen2_checkpoint / rel
        assert f.is_file(), rel
        assert rec["sha256"] == sha256(f), rel
        assert rec["bytes"] == f.stat().st_size, rel
    (output,) = manifest["outputs"]
    assert output["path"] == out.name
    assert output["sha256"] == sha256(out) == res["sha256"]
    assert output["bytes"] == out.stat().st_size
    text = Path(res["manifest"]).read_text()
    assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n"  # sorted keys, no timestamps
