"""Every bad input gets one actionable line, the right exit code, and leaves nothing behind.

Each case runs the real CLI (`python -m bitconv hf2gguf ...`) as a subprocess and checks (a) the
message's key phrase, (b) the exit code (2 bad input/usage, 130 interrupted), (c) no file at the
output path and no `.*.bitconv-tmp.*` left in the output folder, and never a Python traceback.
"""
from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from safetensors.numpy import save_file as save_numpy

from cli_helpers import (assert_nothing_written, clone_checkpoint, cli_env, error_line, json_result,
                         read_gguf_tensors, run_cli, sigint_as_in_a_terminal, write_config, write_raw_safetensors)

BAD_INPUT = 2
INTERRUPTED = 130


def convert_fails(source: Path | str, out_dir: Path, phrases: str | tuple[str, ...], *extra: str,
                  code: int = BAD_INPUT, as_json: bool = False, env: dict[str, str] | None = None,
                  error_type: str | None = None) -> str:
    """Run hf2gguf SOURCE -o OUT_DIR/model.gguf, expect failure; return the error message."""
    out = out_dir / "model.gguf"
    args = ["hf2gguf", str(source), "-o", str(out), *extra] + (["--json"] if as_json else [])
    proc = run_cli(*args, env=env)
    assert proc.returncode == code, f"exit {proc.returncode}, stdout={proc.stdout!r} stderr={proc.stderr[-3000:]!r}"
    assert "Traceback" not in proc.stderr, proc.stderr
    if as_json:
        obj = json_result(proc)
        assert obj["ok"] is False and obj["command"] == "hf2gguf"
        err = obj["error"]
        assert isinstance(err["type"], str) and err["type"]
        assert err["exit_code"] == code
        if error_type:
            assert err["type"] == error_type
        message = err["message"]
        assert "\n" not in message
    else:
        assert proc.stdout == "", f"stdout should be empty on failure: {proc.stdout!r}"
        message = error_line(proc)
    for phrase in (phrases,) if isinstance(phrases, str) else phrases:
        assert phrase.lower() in message.lower(), f"{phrase!r} not in {message!r}"
    assert_nothing_written(out_dir, out)
    assert sorted(p.name for p in out_dir.iterdir()) == [], "a failed run left files in the output folder"
    return message


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def tiny(tmp_path: Path) -> Callable[..., Path]:
    """A config.json folder with a small valid model.safetensors (enough to get past the reader)."""

    def make(config: dict[str, Any] | None = None, name: str = "tiny") -> Path:
        d = write_config(tmp_path / name, config)
        save_numpy({"model.norm.weight": np.ones(8, np.float32)}, str(d / "model.safetensors"))
        return d

    return make


# --- config.json --------------------------------------------------------------------------------

def test_missing_config(tmp_path: Path, out_dir: Path) -> None:
    d = tmp_path / "ckpt"
    d.mkdir()
    save_numpy({"x": np.ones(4, np.float32)}, str(d / "model.safetensors"))
    convert_fails(d, out_dir, ("no config.json", str(d)))


def test_missing_config_json_output(tmp_path: Path, out_dir: Path) -> None:
    d = tmp_path / "ckpt"
    d.mkdir()
    convert_fails(d, out_dir, "no config.json", as_json=True, error_type="CheckpointError")


def test_invalid_json_config(tiny: Callable[..., Path], out_dir: Path) -> None:
    d = tiny()
    (d / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"],,}')
    convert_fails(d, out_dir, ("config.json", "invalid JSON"))


def test_unknown_architecture(tiny: Callable[..., Path], out_dir: Path) -> None:
    d = tiny({"architectures": ["FrobnicatorForCausalLM"]})
    msg = convert_fails(d, out_dir, ("FrobnicatorForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"))
    assert "unsupported architecture" in msg


def test_unknown_architecture_json(tiny: Callable[..., Path], out_dir: Path) -> None:
    d = tiny({"architectures": ["FrobnicatorForCausalLM"]})
    convert_fails(d, out_dir, ("FrobnicatorForCausalLM", "supported", "Qwen2ForCausalLM"), as_json=True,
                  error_type="UnsupportedArchitecture")


# --- safetensors files --------------------------------------------------------------------------

def test_shard_listed_in_index_but_missing(tmp_path: Path, out_dir: Path) -> None:
    d = write_config(tmp_path / "ckpt")
    save_numpy({"a": np.ones(4, np.float32)}, str(d / "model-00001-of-00002.safetensors"))
    index = {"metadata": {"total_size": 32},
             "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    convert_fails(d, out_dir, ("model-00002-of-00002.safetensors", "missing"))


def test_tensor_listed_in_index_but_in_no_shard(tmp_path: Path, out_dir: Path) -> None:
    """An index promising lm_head.weight that no shard holds: refused, not converted without the head."""
    d = write_config(tmp_path / "ckpt")
    save_numpy({"model.norm.weight": np.ones(4, np.float32)}, str(d / "model-00001-of-00001.safetensors"))
    index = {"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors",
                            "lm_head.weight": "model-00001-of-00001.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    convert_fails(d, out_dir, ("lm_head.weight", "no shard holds it"))


@pytest.mark.parametrize("index_text", ['{"weight_map": ', '{"weight_map": {}}', '{"weight_map": {"a": 3}}'],
                         ids=["invalid-json", "empty", "non-string-file"])
@pytest.mark.parametrize("kind", ["safetensors", "pickle"])
def test_malformed_index(tmp_path: Path, out_dir: Path, index_text: str, kind: str) -> None:
    d = write_config(tmp_path / "ckpt")
    name = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    (d / name).write_text(index_text)
    convert_fails(d, out_dir, (name, "invalid index"))


@pytest.mark.parametrize("keep", [4, 20, -3], ids=["no-header", "cut-in-header", "cut-in-data"])
def test_truncated_safetensors(tmp_path: Path, out_dir: Path, keep: int) -> None:
    d = write_config(tmp_path / "ckpt")
    f = d / "model.safetensors"
    save_numpy({"model.norm.weight": np.arange(64, dtype=np.float32)}, str(f))
    raw = f.read_bytes()
    f.write_bytes(raw[:keep])
    convert_fails(d, out_dir, ("model.safetensors", "truncated"))


def test_overlapping_data_offsets(tmp_path: Path, out_dir: Path) -> None:
    d = write_config(tmp_path / "ckpt")
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    write_raw_safetensors(d / "model.safetensors", header, bytes(24))
    convert_fails(d, out_dir, ("model.safetensors", "overlap"))


def test_data_offsets_past_end_of_file(tmp_path: Path, out_dir: Path) -> None:
    d = write_config(tmp_path / "ckpt")
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [1024], "data_offsets": [16, 16 + 4096]}}
    write_raw_safetensors(d / "model.safetensors", header, bytes(64))
    convert_fails(d, out_dir, ("model.safetensors", "past the end of the file"))


def test_header_length_larger_than_file(tmp_path: Path, out_dir: Path) -> None:
    d = write_config(tmp_path / "ckpt")
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    write_raw_safetensors(d / "model.safetensors", header, bytes(16), header_len=10**9)
    convert_fails(d, out_dir, ("model.safetensors", "header length", "larger than the file"))


def test_index_escaping_checkpoint_dir(tmp_path: Path, out_dir: Path) -> None:
    d = write_config(tmp_path / "ckpt")
    # the target exists: the refusal must come from the name, not from a missing file
    save_numpy({"a": np.ones(4, np.float32)}, str(tmp_path / "x.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../x.safetensors"}}))
    convert_fails(d, out_dir, ("../x.safetensors", "outside the checkpoint"))


def test_markup_like_file_name_is_printed_verbatim(tmp_path: Path, out_dir: Path) -> None:
    """A name that looks like rich markup must not crash the error printer (it did: MarkupError)."""
    d = write_config(tmp_path / "ckpt")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "[/]x[bold].safetensors"}}))
    convert_fails(d, out_dir, ("[/]x[bold].safetensors", "missing"))


# --- tensors that disagree with the config, or hold NaN/Inf ---------------------------------------

def test_shape_disagrees_with_config(qwen2_checkpoint: Path, tmp_path: Path, out_dir: Path) -> None:
    d = clone_checkpoint(qwen2_checkpoint, tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] + 32
    (d / "config.json").write_text(json.dumps(cfg))
    convert_fails(d, out_dir, ("model.layers.0.mlp.", "disagrees with config.json"))


def test_hidden_size_disagrees_with_config(qwen2_checkpoint: Path, tmp_path: Path, out_dir: Path) -> None:
    d = clone_checkpoint(qwen2_checkpoint, tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_size"] = cfg["hidden_size"] * 2
    (d / "config.json").write_text(json.dumps(cfg))
    convert_fails(d, out_dir, "disagrees with config.json")


def _drop_tensor(src: Path, dst: Path, tensor: str) -> Path:
    from safetensors.torch import load_file, save_file

    d = clone_checkpoint(src, dst)
    f = d / "model.safetensors"
    state = load_file(str(f))
    del state[tensor]
    save_file(state, str(f), metadata={"format": "pt"})
    return d


def test_missing_lm_head_of_untied_model(qwen2_checkpoint: Path, tmp_path: Path, out_dir: Path) -> None:
    """llama.cpp would silently reuse the embeddings as the output layer: refuse instead."""
    d = _drop_tensor(qwen2_checkpoint, tmp_path / "ckpt", "lm_head.weight")
    convert_fails(d, out_dir, ("output.weight", "tie_word_embeddings is false"))


def test_missing_layer_tensor(qwen2_checkpoint: Path, tmp_path: Path, out_dir: Path) -> None:
    d = _drop_tensor(qwen2_checkpoint, tmp_path / "ckpt", "model.layers.1.self_attn.v_proj.weight")
    convert_fails(d, out_dir, ("layer 1", "blk.1.attn_v.weight"))


BAD_TENSOR = "model.layers.0.mlp.down_proj.weight"


def _poison(src: Path, dst: Path, value: float, tensor: str = BAD_TENSOR) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    d = clone_checkpoint(src, dst)
    f = d / "model.safetensors"
    state = load_file(str(f))
    t = state[tensor].clone()
    t.view(-1)[7] = value
    state[tensor] = t.to(torch.bfloat16)
    save_file(state, str(f), metadata={"format": "pt"})
    return d


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nonfinite_weight_names_tensor(qwen2_checkpoint: Path, tmp_path: Path, out_dir: Path, value: float) -> None:
    d = _poison(qwen2_checkpoint, tmp_path / "ckpt", value)
    convert_fails(d, out_dir, (BAD_TENSOR, "NaN/Inf", "--allow-nonfinite"), as_json=value != value)


def test_weight_beyond_f16_range_names_tensor(qwen2_checkpoint: Path, tmp_path: Path, out_dir: Path) -> None:
    """A finite weight f16 cannot hold would silently become inf (llama.cpp's converter writes it)."""
    d = _poison(qwen2_checkpoint, tmp_path / "ckpt", 1e6)
    convert_fails(d, out_dir, (BAD_TENSOR, "65520", "bf16 or f32", "--allow-nonfinite"))
    for quant in ("bf16", "q8_0"):  # types that hold it convert
        proc = run_cli("hf2gguf", d, "-q", quant, "-o", out_dir / f"{quant}.gguf")
        assert proc.returncode == 0, proc.stderr


def test_nonfinite_weight_converts_with_allow_nonfinite(qwen2_checkpoint: Path, tmp_path: Path,
                                                        out_dir: Path) -> None:
    d = _poison(qwen2_checkpoint, tmp_path / "ckpt", float("nan"))
    out = out_dir / "model.gguf"
    proc = run_cli("hf2gguf", d, "-o", out, "--allow-nonfinite")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    tid, shape, data = read_gguf_tensors(out)["blk.0.ffn_down.weight"]
    assert tid == 1  # F16
    values = np.frombuffer(data, dtype="<f2")
    assert np.isnan(values).sum() == 1 and np.isnan(values[7])
    assert_nothing_written(out_dir)  # no temp files


# --- output path ----------------------------------------------------------------------------------

def test_existing_output_refused_then_forced(qwen2_checkpoint: Path, out_dir: Path) -> None:
    out = out_dir / "model.gguf"
    out.write_bytes(b"precious")
    proc = run_cli("hf2gguf", qwen2_checkpoint, "-o", out)
    assert proc.returncode == BAD_INPUT
    line = error_line(proc)
    assert "already exists" in line and "--force" in line
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.gguf"]

    proc = run_cli("hf2gguf", qwen2_checkpoint, "-o", out, "--force", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json_result(proc)
    assert res["ok"] is True and res["result"]["output"] == str(out)
    assert out.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.gguf", "model.gguf.manifest.json"]


# --- pickles --------------------------------------------------------------------------------------

@pytest.fixture
def pickle_checkpoint(qwen2_checkpoint: Path, tmp_path: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    # same folder name as the source: general.name is derived from it, so the GGUFs can be compared bytewise
    d = clone_checkpoint(qwen2_checkpoint, tmp_path / qwen2_checkpoint.name)
    state = load_file(str(d / "model.safetensors"))
    torch.save(state, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    return d


def test_pickle_refused_without_allow_pickle(pickle_checkpoint: Path, out_dir: Path) -> None:
    convert_fails(pickle_checkpoint, out_dir, ("pytorch_model.bin", "pickle", "--allow-pickle"))


def test_pickle_accepted_with_allow_pickle(pickle_checkpoint: Path, qwen2_checkpoint: Path, out_dir: Path) -> None:
    proc = run_cli("hf2gguf", pickle_checkpoint, "-o", out_dir / "from-pickle.gguf", "--allow-pickle", "--json",
                   "--no-manifest")
    assert proc.returncode == 0, proc.stderr
    ref = run_cli("hf2gguf", qwen2_checkpoint, "-o", out_dir / "from-safetensors.gguf", "--json", "--no-manifest")
    assert ref.returncode == 0, ref.stderr
    # the same tensors, types and metadata: byte-identical artifacts
    assert json_result(proc)["result"]["sha256"] == json_result(ref)["result"]["sha256"]


@pytest.mark.parametrize("payload", ["non-tensor-entry", "not-a-dict"])
def test_pickle_that_is_not_a_state_dict(tmp_path: Path, out_dir: Path, payload: str) -> None:
    import torch

    d = write_config(tmp_path / "ckpt")
    obj = {"model.norm.weight": torch.ones(4), "step": 3} if payload == "non-tensor-entry" else [torch.ones(4)]
    torch.save(obj, d / "pytorch_model.bin")
    convert_fails(d, out_dir, ("pytorch_model.bin", "step is a int, not a tensor" if payload == "non-tensor-entry"
                               else "not a state dict"), "--allow-pickle")


# --- options and sources --------------------------------------------------------------------------

def test_ternary_type_refused_for_non_ternary_model(qwen2_checkpoint: Path, out_dir: Path) -> None:
    convert_fails(qwen2_checkpoint, out_dir, ("i2_s is a ternary type", "not a ternary-trained model"),
                  "--quant", "i2_s")


def test_unknown_quant_type(qwen2_checkpoint: Path, out_dir: Path) -> None:
    msg = convert_fails(qwen2_checkpoint, out_dir, ("unknown quant type", "q3_zz", "q4_0", "f16"), "-q", "q3_zz")
    assert "q8_0" in msg


def test_unknown_quant_type_json(qwen2_checkpoint: Path, out_dir: Path) -> None:
    convert_fails(qwen2_checkpoint, out_dir, ("unknown quant type", "q3_zz"), "-q", "q3_zz", as_json=True,
                  error_type="UsageError")


def test_unknown_quant_type_default_output_in_cwd(qwen2_checkpoint: Path, tmp_path: Path) -> None:
    proc = run_cli("hf2gguf", qwen2_checkpoint, "-q", "q3_zz", cwd=tmp_path)
    assert proc.returncode == BAD_INPUT
    assert "unknown quant type" in error_line(proc)
    assert list(tmp_path.iterdir()) == []


def test_source_does_not_exist(tmp_path: Path, out_dir: Path) -> None:
    missing = tmp_path / "no" / "such" / "checkpoint"
    convert_fails(missing, out_dir, (str(missing), "no such checkpoint directory"))


def test_source_is_a_file(tmp_path: Path, out_dir: Path) -> None:
    f = tmp_path / "model.safetensors"
    save_numpy({"x": np.ones(2, np.float32)}, str(f))
    convert_fails(f, out_dir, ("is a file", "checkpoint directory"))


def test_repo_id_offline(tmp_path: Path, out_dir: Path) -> None:
    env = cli_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), HF_HUB_CACHE=str(tmp_path / "hf-cache"))
    msg = convert_fails("nobody-xyz/no-such-model", out_dir, ("nobody-xyz/no-such-model", "HF_HUB_OFFLINE"), env=env)
    assert "cannot be fetched" in msg


def test_repo_id_offline_json(tmp_path: Path, out_dir: Path) -> None:
    env = cli_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), HF_HUB_CACHE=str(tmp_path / "hf-cache"))
    convert_fails("nobody-xyz/no-such-model", out_dir, "HF_HUB_OFFLINE", env=env, as_json=True,
                  error_type="CheckpointError")


# --- disk full --------------------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs: {e}")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


def test_disk_full_checked_up_front(qwen2_checkpoint: Path, small_tmpfs: Path) -> None:
    convert_fails(qwen2_checkpoint, small_tmpfs, ("not enough disk space", "MiB"))


def test_disk_full_during_write(qwen2_checkpoint: Path, small_tmpfs: Path) -> None:
    """ENOSPC in the middle of the write (the free-space estimate bypassed): one line, nothing left."""
    out = small_tmpfs / "model.gguf"
    script = textwrap.dedent("""
        import sys
        import bitconv.cli
        import bitconv.gguf_output
        bitconv.gguf_output.check_free_space = lambda folder, needed: None
        sys.argv = ["bitconv"] + sys.argv[1:]
        bitconv.cli.main()
    """)
    proc = subprocess.run([sys.executable, "-c", script, "hf2gguf", str(qwen2_checkpoint), "-o", str(out)],
                          capture_output=True, text=True, timeout=120, env=cli_env())
    assert proc.returncode == BAD_INPUT, proc.stderr
    line = error_line(proc)
    assert "disk full" in line and str(out) in line
    assert_nothing_written(small_tmpfs, out)
    assert list(small_tmpfs.iterdir()) == []


# --- Ctrl-C ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_checkpoint(checkpoint_factory: Callable[..., Path]) -> Path:
    return checkpoint_factory("qwen2", "f32", 1, "hub", hidden=512, layers=4)


@pytest.mark.parametrize(("delay", "as_json"), [(0.0, False), (0.3, True)], ids=["at-once", "later-json"])
def test_ctrl_c_during_write(big_checkpoint: Path, out_dir: Path, delay: float, as_json: bool) -> None:
    out = out_dir / "model.gguf"
    cmd = [sys.executable, "-m", "bitconv", "hf2gguf", str(big_checkpoint), "-o", str(out)] + (["--json"] if as_json else [])
    proc = subprocess.Popen(cmd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            stdin=subprocess.DEVNULL,
                            preexec_fn=sigint_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 60
        while not any(out_dir.glob(".*.bitconv-tmp.*")):
            assert proc.poll() is None, f"conversion ended before its temp file was seen: {proc.communicate()}"
            assert time.monotonic() < deadline, "no temp file appeared"
            time.sleep(0.005)
        time.sleep(delay)
        assert proc.poll() is None, "conversion finished before it could be interrupted: make the checkpoint bigger"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == INTERRUPTED, stderr
    assert "Traceback" not in stderr, stderr
    if as_json:
        obj = json.loads(stdout)
        assert obj["ok"] is False and obj["error"]["exit_code"] == INTERRUPTED
        assert obj["error"]["message"] == "interrupted, nothing written"
        assert len(stdout.strip().splitlines()) == 1
    else:
        assert "interrupted, nothing written" in stderr
        assert stdout == ""
    assert_nothing_written(out_dir, out)
    assert list(out_dir.iterdir()) == []


def test_header_length_field_is_little_endian_u64(tmp_path: Path) -> None:
    """Sanity check of the forging helper itself: a well-formed hand-made file is accepted."""
    from bitconv.convert.checkpoint import read_safetensors_header

    f = write_raw_safetensors(tmp_path / "ok.safetensors",
                              {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                              struct.pack("<2f", 1.0, 2.0))
    (entry,) = read_safetensors_header(f)
    assert entry.name == "a" and entry.shape == (2,) and entry.end - entry.begin == 8


def test_disk_full_writing_a_sidecar(small_tmpfs: Path) -> None:
    """The manifest is written after the artifact: a full disk there is a typed error, not an internal one."""
    from bitconv.errors import OutputError
    from bitconv.formats.atomic import write_text_atomic

    with open(small_tmpfs / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    target = small_tmpfs / "model.gguf.manifest.json"
    with pytest.raises(OutputError, match="disk full while writing"):
        write_text_atomic(target, "{}\n" * 50_000)
    assert not target.exists()
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]
