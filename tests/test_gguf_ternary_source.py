"""bitconv's i2_s against bitnet.cpp's own I2_S file of the same checkpoint, and that file as a source.

The reference is what bitnet.cpp's BitNetForCausalLM flow (preprocess, convert-ms-to-gguf-bitnet.py,
`llama-quantize … I2_S 1`, torch at one thread) wrote for the fixture checkpoint named in
tests/golden/bitnet_cpp_i2s.json; the file is rebuilt here from that record
(tests/bitnet_cpp_golden.py, the `bitnet_cpp_golden` fixture), its sha256 checked.
"""
from __future__ import annotations

import numpy as np
import pytest

import gguf_raw
from bitnet_cpp_golden import file_sha256
from bitconv.convert.gguf_source import GGUFSource


def _i2s_parts(data: bytes, ne: list[int]) -> tuple[bytes, bytes]:
    n = ne[0] * ne[1] // 4
    return data[:n], data[n:n + 4]


def test_rebuilt_file_is_bitnet_cpps(bitnet_cpp_golden):
    """The fixture regenerates the golden's checkpoint (embedding, norms, codes), and the rebuilt
    file is bitnet.cpp's, byte for byte but the uninitialised pads."""
    g = bitnet_cpp_golden
    assert file_sha256(g.bitnet_i2s) == g.golden["file_sha256_pads_zeroed"]
    assert g.bitnet_i2s.stat().st_size == g.golden["file_bytes"]


def test_non_ternary_tensors_are_bitnet_cpps(bitnet_cpp_golden):
    """token_embd (F16) and every norm (F32): bitconv's bytes are bitnet.cpp's."""
    g = bitnet_cpp_golden
    ours = gguf_raw.read(g.ours_i2s)
    for rec in g.golden["tensors"]:
        if rec["type"] == "I2_S":
            continue
        t = ours.tensor(rec["name"])
        assert (t.type_name, t.ne) == (rec["type"], rec["ne"]), rec["name"]
        assert gguf_raw.sha256(ours.tensor_bytes(rec["name"])) == rec["sha256"], rec["name"]


def test_i2s_codes_are_bitnet_cpps(bitnet_cpp_golden):
    g = bitnet_cpp_golden
    ours = gguf_raw.read(g.ours_i2s)
    for rec in g.i2s_records():
        t = ours.tensor(rec["name"])
        assert (t.type_name, t.ne) == ("I2_S", rec["ne"]), rec["name"]
        codes, _ = _i2s_parts(ours.tensor_bytes(rec["name"]), rec["ne"])
        assert gguf_raw.sha256(codes) == rec["codes_sha256"], rec["name"]


def test_i2s_codes_and_scales_are_bitnet_cpps(bitnet_cpp_golden):
    """Every I2_S tensor's codes + f32 scale: bitconv's bytes are bitnet.cpp's (one torch thread)."""
    g = bitnet_cpp_golden
    ours = gguf_raw.read(g.ours_i2s)
    off = [rec["name"] for rec in g.i2s_records()
           if gguf_raw.sha256(gguf_raw.i2s_meaningful("I2_S", rec["ne"], ours.tensor_bytes(rec["name"]))) != rec["sha256"]]
    assert not off, f"{len(off)} of {len(g.i2s_records())} I2_S tensors differ: {off}"


def test_converter_scale_is_bitnet_cpps_at_its_thread_count(bitnet_cpp_golden):
    """bitnet.cpp's scale is torch's float32 mean, which depends on the preprocess process's thread
    count (sums of > 32768 values are split across threads): bitconv's converter_scale reproduces
    the golden at one thread and the recorded two-thread run at two."""
    import fixtures_bitnet

    from bitconv.quant.ternary import converter_scale

    g = bitnet_cpp_golden
    raw = fixtures_bitnet.load_safetensors(g.checkpoint)
    hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj"}
    differ = 0
    for rec in g.i2s_records():
        _, layer, kind, _ = rec["name"].split(".")
        w = raw[f"model.layers.{layer}.{hf[kind]}.weight"].float().numpy()  # bf16 widens exactly
        for threads, key in ((1, "scale_hex"), (2, "scale_threads2_hex")):
            got = np.float32(converter_scale([w], threads).scale).astype("<f4").tobytes().hex()
            assert got == rec[key], (rec["name"], threads)
        differ += rec["scale_hex"] != rec["scale_threads2_hex"]
    assert differ == g.golden["scales_differing_at_two_threads"] > 0


def test_gguf_source_reads_bitnet_cpp_file(bitnet_cpp_golden):
    """GGUFSource on bitnet.cpp's file: its metadata (value types too), tensor types and shapes, and
    per I2_S tensor the codes bitconv's own file holds and bitnet.cpp's scale."""
    g = bitnet_cpp_golden
    src, ours = GGUFSource.open(g.bitnet_i2s), GGUFSource.open(g.ours_i2s)
    assert list(src.metadata) == [r["key"] for r in g.golden["metadata"]]
    for rec in g.golden["metadata"]:
        vtype, item = src.value_types[rec["key"]]
        assert gguf_raw.VALUE_TYPES[vtype] == rec["type"], rec["key"]
        if "item_type" in rec:
            assert gguf_raw.VALUE_TYPES[item] == rec["item_type"] and len(src.metadata[rec["key"]]) == rec["count"]
        else:
            assert src.metadata[rec["key"]] == rec["value"], rec["key"]
    assert list(src.tensors) == [r["name"] for r in g.golden["tensors"]]
    for rec in g.golden["tensors"]:
        t = src.tensors[rec["name"]]
        assert (t.type_name, t.shape) == (rec["type"], tuple(reversed(rec["ne"]))), rec["name"]
        if rec["type"] != "I2_S":
            continue
        codes, scale = t.codes_and_scale()
        our_codes, _ = ours.tensors[rec["name"]].codes_and_scale()
        assert codes.dtype == np.int8 and np.array_equal(codes, our_codes), rec["name"]
        assert np.float32(scale).astype("<f4").tobytes().hex() == rec["scale_hex"], rec["name"]
        rows = t.dequantize_rows(3, 7)
        np.testing.assert_array_equal(rows, codes[3:7].astype(np.float32) * np.float32(scale))
