"""`bitconv quantize IN.gguf OUT.gguf TYPE` on ternary GGUFs (issue 18, part 3): repacks are exact in
the codes.

* From an I2_S file (one f32 scale per tensor) every ternary type gives the bytes
  `bitconv.convert(checkpoint, "gguf", TYPE)` gives; the source is bitnet.cpp's own I2_S file of the
  checkpoint (rebuilt from tests/golden/bitnet_cpp_i2s.json, the `bitnet_cpp_golden` fixture) or
  bitconv's. The output keeps the source's metadata (bitnet.cpp's keys, values and order), only
  `general.file_type` changes.
* From TQ2_0 (an f16 scale per block) to I2_S: the scale is the shared block scale widened, and a
  tensor whose blocks disagree is refused.
* A 1bitLLM-style model's tq2_0 made from its i2_s runs in llama.cpp (llama-cpp-python) as the
  direct tq2_0 does.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bitconv.requantize")

import bitconv  # noqa: E402
import gguf_raw  # noqa: E402
from bitconv.errors import BitconvError  # noqa: E402
from bitconv.requantize import quantize  # noqa: E402
from bitnet_cpp_golden import file_sha256  # noqa: E402
from cli_helpers import run_cli  # noqa: E402

TERNARY_TARGETS = ["tl1", "tl2", "tq2_0", "tq1_0"]


@pytest.fixture(scope="module")
def direct(bitnet_cpp_golden, tmp_path_factory):
    """direct(type) → bitconv.convert(golden checkpoint, "gguf", type), made once per type."""
    root = tmp_path_factory.mktemp("direct")
    made: dict[str, Path] = {"i2_s": bitnet_cpp_golden.ours_i2s}

    def get(qtype: str) -> Path:
        if qtype not in made:
            made[qtype] = root / f"bitnet-tiny-{qtype}.gguf"
            bitconv.convert(bitnet_cpp_golden.checkpoint, "gguf", qtype, made[qtype], manifest=False)
        return made[qtype]

    return get


@pytest.fixture(scope="module")
def repacked(tmp_path_factory):
    """repacked(source, type) → quantize(source, …, type, nthreads=1), made once per pair; the
    result object is kept beside the path."""
    root = tmp_path_factory.mktemp("repacked")
    made: dict[tuple[Path, str], tuple[Path, object]] = {}

    def get(src: Path, qtype: str) -> tuple[Path, object]:
        key = (Path(src), qtype)
        if key not in made:
            res = quantize(src, root / f"{len(made)}-{Path(src).stem}-{qtype}.gguf", qtype, nthreads=1)
            made[key] = (Path(res.output), res)
        return made[key]

    return get


@functools.lru_cache(maxsize=16)
def _read(path: Path, mtime_ns: int) -> gguf_raw.GGUFFile:
    return gguf_raw.read(path)


def _header(path: Path) -> gguf_raw.GGUFFile:
    return _read(Path(path), Path(path).stat().st_mtime_ns)


def _tensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    f = _header(path)
    return {t.name: (t.type_name, t.ne, f.tensor_bytes(t.name)) for t in f.tensors}


def _kvs(path: Path) -> list[tuple[str, int, bytes]]:
    return [(kv.key, kv.vtype, kv.raw) for kv in _header(path).kvs]


def _file_type(path: Path) -> int:
    return int(_header(path).kv("general.file_type").value)


def _assert_same_tensors(got: Path, want: Path) -> None:
    a, b = _tensors(got), _tensors(want)
    assert sorted(a) == sorted(b)
    for name, (ty, ne, data) in b.items():
        assert a[name][:2] == (ty, ne), name
        assert a[name][2] == data, f"{name} ({ty}): bytes differ"


def _assert_source_metadata(out: Path, source: Path, file_type: int) -> None:
    """The output's keys are the source's, in its order, with its value types and bytes; only
    general.file_type is the target's."""
    want = [(k, t, gguf_raw.encode_value(4, file_type) if k == "general.file_type" else raw)
            for k, t, raw in _kvs(source)]
    got = _kvs(out)
    assert [k for k, _, _ in got] == [k for k, _, _ in want]
    for g, w in zip(got, want):
        assert g == w, f"{w[0]}: not the source's value"


def _assert_same_tilings(out: Path, ref: Path) -> None:
    from bitconv.quant.tl import KernelConfig

    ini = lambda p: p.with_name(p.name[:-5] + ".kernel_config.ini")  # noqa: E731
    assert ini(out).is_file(), f"no {ini(out).name} beside the output"
    a, b = KernelConfig.read(ini(out)), KernelConfig.read(ini(ref))
    assert {(t.m, t.k): t for t in a.tilings} == {(t.m, t.k): t for t in b.tilings}


# --------------------------------------------------------------------------- from bitnet.cpp's I2_S file

@pytest.mark.parametrize("target", TERNARY_TARGETS)
def test_bitnet_cpp_i2s_repacks_like_direct_conversion(bitnet_cpp_golden, direct, repacked, target):
    """bitnet.cpp's I2_S → TYPE: every tensor (ternary, F16 embedding, F32 norms) is the direct
    conversion's, byte for byte; the metadata is bitnet.cpp's with the target's file type."""
    src = bitnet_cpp_golden.bitnet_i2s
    out, _ = repacked(src, target)
    ref = direct(target)
    _assert_same_tensors(out, ref)
    _assert_source_metadata(out, src, _file_type(ref))
    if target in ("tl1", "tl2"):
        _assert_same_tilings(out, ref)


def test_bitnet_cpp_i2s_to_i2s_is_the_file_itself(bitnet_cpp_golden, repacked):
    """A repack to the source's own type changes nothing (the I2_S pads are zeros in both)."""
    out, _ = repacked(bitnet_cpp_golden.bitnet_i2s, "i2_s")
    assert file_sha256(out) == bitnet_cpp_golden.golden["file_sha256_pads_zeroed"]


@pytest.mark.parametrize("via", ["tl1", "tl2"])
def test_bitnet_cpp_i2s_through_lut_and_back_is_the_file_itself(bitnet_cpp_golden, repacked, via):
    """i2_s → tl1/tl2 → i2_s: codes and f32 scales survive (tl files are read with the
    kernel_config.ini written beside them), so the result is bitnet.cpp's file again."""
    mid, _ = repacked(bitnet_cpp_golden.bitnet_i2s, via)
    back, _ = repacked(mid, "i2_s")
    assert file_sha256(back) == bitnet_cpp_golden.golden["file_sha256_pads_zeroed"]


# --------------------------------------------------------------------------- from bitconv's own I2_S file

@pytest.mark.parametrize("target", [
    "tq2_0", "tq1_0", "i2_s", "tl1", "tl2"])
def test_our_i2s_repacks_to_the_direct_file(bitnet_cpp_golden, direct, repacked, target):
    """bitconv's own i2_s → TYPE is the direct conversion's whole file: their metadata differ only
    in general.file_type, and the scale is the one the checkpoint gives every ternary type."""
    out, _ = repacked(bitnet_cpp_golden.ours_i2s, target)
    ref = direct(target)
    _assert_same_tensors(out, ref)
    assert out.read_bytes() == ref.read_bytes()


# --------------------------------------------------------------------------- from TQ2_0

def test_tq2_0_to_i2s_widens_the_block_scale(bitnet_cpp_golden, direct, repacked):
    """tq2_0 → i2_s: codes are bitnet.cpp's, the scale is the tensor's f16 block scale widened to
    f32 (the checkpoint's scale rounded through f16 once), and the output says so."""
    src = direct("tq2_0")
    out, res = repacked(src, "i2_s")
    got = _tensors(out)
    for rec in bitnet_cpp_golden.i2s_records():
        ty, ne, data = got[rec["name"]]
        assert (ty, ne) == ("I2_S", rec["ne"]), rec["name"]
        n = ne[0] * ne[1] // 4
        assert gguf_raw.sha256(data[:n]) == rec["codes_sha256"], rec["name"]
        s32 = np.frombuffer(bytes.fromhex(rec["scale_hex"]), dtype="<f4")[0]
        assert data[n:n + 4] == np.float32(np.float16(s32)).astype("<f4").tobytes(), rec["name"]
        assert data[n + 4:] == bytes(28), rec["name"]
    ours = _tensors(bitnet_cpp_golden.ours_i2s)
    for name, (ty, _, data) in ours.items():
        if ty != "I2_S":
            assert got[name][2] == data, name
    _assert_source_metadata(out, src, _file_type(bitnet_cpp_golden.ours_i2s))
    assert "f16" in repr(res), "the result should say the scale was rounded through f16"


def _mixed_scales(src: Path, out: Path, tensor: str) -> Path:
    """A copy of tq2_0 file `src` whose `tensor` has one block with twice the others' scale."""
    f = gguf_raw.read(src)
    t = f.tensor(tensor)
    data = bytearray(src.read_bytes())
    at = f.data_start + t.offset + 66 + 64  # the second block's f16 d
    d = np.frombuffer(bytes(data[at:at + 2]), dtype="<f2")[0]
    assert d != 0
    data[at:at + 2] = np.float16(2 * d).astype("<f2").tobytes()
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("target", ["i2_s", "tl2"])
def test_tq2_0_with_mixed_block_scales_is_refused(direct, target, tmp_path):
    bad = _mixed_scales(direct("tq2_0"), tmp_path / "mixed-tq2_0.gguf", "blk.1.attn_q.weight")
    out = tmp_path / f"out-{target}.gguf"
    with pytest.raises(BitconvError, match=r"blk\.1\.attn_q\.weight"):
        quantize(bad, out, target, nthreads=1)
    assert not out.exists()


def test_cli_refuses_mixed_block_scales_with_exit_2(direct, tmp_path):
    bad = _mixed_scales(direct("tq2_0"), tmp_path / "mixed-tq2_0.gguf", "blk.0.ffn_down.weight")
    proc = run_cli("quantize", bad, tmp_path / "out.gguf", "i2_s", "1")
    assert proc.returncode == 2, proc.stderr
    assert "blk.0.ffn_down.weight" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- 1bitLLM-style, run by llama.cpp

def test_onebit_tq2_0_from_i2s_runs_in_llamacpp(tmp_path):
    """1bitLLM-style BitnetForCausalLM: hf2gguf i2_s → quantize tq2_0 is the direct tq2_0 file, and
    llama.cpp gives it the direct file's logits (which follow the ternary-weights reference)."""
    pytest.importorskip("llama_cpp")
    import fixtures_onebit
    from runtimes import cos, llama_last_logits

    tokens = [1, 50, 60, 70, 80, 90, 100, 200, 300, 400, 500, 600, 700]
    ckpt = fixtures_onebit.make_onebit_checkpoint(tmp_path / "onebit", dtype="bf16")
    i2s, ref = tmp_path / "onebit-i2_s.gguf", tmp_path / "onebit-tq2_0.gguf"
    bitconv.convert(ckpt, "gguf", "i2_s", i2s, manifest=False)
    bitconv.convert(ckpt, "gguf", "tq2_0", ref, manifest=False)
    out = Path(quantize(i2s, tmp_path / "repacked-tq2_0.gguf", "tq2_0", nthreads=1).output)
    _assert_same_tensors(out, ref)
    _assert_source_metadata(out, i2s, _file_type(ref))
    got, want = llama_last_logits(out, tokens), llama_last_logits(ref, tokens)
    np.testing.assert_array_equal(got, want)
    reference = fixtures_onebit.ternary_weights_logits(ckpt, tokens)
    assert cos(got, reference) >= 0.999 and int(np.argmax(got)) == int(np.argmax(reference))
