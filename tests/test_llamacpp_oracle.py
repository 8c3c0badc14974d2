"""Self-test of tests/llamacpp_oracle.py: the reference converter runs, is deterministic, and
compare_gguf/metadata_diff/file_diff notice a single flipped byte."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import llamacpp_oracle as oracle  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def reference_ready() -> Path:
    """The sdist's vendor/llama.cpp; when it (or the converter's deps) is unavailable: skip, or fail
    under CI."""
    missing = oracle.missing_converter_requirements()
    if missing:
        oracle.skip_or_fail(f"llama.cpp converter needs: {' '.join(missing)}")
    try:
        return oracle.llamacpp_source()
    except oracle.ReferenceUnavailable as e:
        oracle.skip_or_fail(str(e))


@pytest.fixture(scope="session")
def qwen2_ref_pair(
    reference_ready: Path, checkpoint_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The same tiny bf16 Qwen2 checkpoint converted twice to q8_0 by llama.cpp."""
    ckpt = checkpoint_factory("qwen2", "bf16", 1, "hub")
    out = tmp_path_factory.mktemp("ref")
    a = oracle.run_reference_converter(ckpt, "q8_0", out / "a.gguf")
    b = oracle.run_reference_converter(ckpt, "q8_0", out / "b.gguf")
    return a, b


def _flip(src: Path, dst: Path, offset: int) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_sdist_layout(reference_ready: Path) -> None:
    assert (reference_ready / "convert_hf_to_gguf.py").is_file()
    assert (reference_ready / "conversion" / "qwen.py").is_file()
    assert (reference_ready / "gguf-py" / "gguf" / "gguf_writer.py").is_file()
    # a second call reuses the cache
    assert oracle.llamacpp_source() == reference_ready


def test_reference_is_deterministic(qwen2_ref_pair: tuple[Path, Path]) -> None:
    a, b = qwen2_ref_pair
    assert oracle.compare_gguf(a, b) == []
    assert oracle.metadata_diff(a, b) == {"only_ours": {}, "only_ref": {}, "different": {}, "order_differs": False}
    assert oracle.file_diff(a, b) is None
    f = oracle.read_gguf(a)
    assert f.kv["general.architecture"].value() == "qwen2"
    assert f.kv["tokenizer.ggml.pre"].value() == "qwen2"
    assert f.kv["general.file_type"].value() == 7  # MOSTLY_Q8_0


def test_flipped_tensor_byte_is_reported(qwen2_ref_pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = qwen2_ref_pair
    f = oracle.read_gguf(a)
    t = f.tensors[-1]
    offset = f.data_offset + t.offset + t.n_bytes // 2
    bad = tmp_path / "bad.gguf"
    _flip(a, bad, offset)
    diffs = oracle.compare_gguf(bad, a)
    assert diffs == [f"{t.name}: data differs in 1 bytes ({t.n_bytes} bytes), first at byte {t.n_bytes // 2}"], diffs
    assert oracle.metadata_diff(bad, a)["different"] == {}
    msg = oracle.file_diff(bad, a)
    assert msg is not None and f"offset {offset}" in msg and repr(t.name) in msg


def test_flipped_kv_bytes_are_reported(qwen2_ref_pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = qwen2_ref_pair
    data = a.read_bytes()

    # an arch hparam: the uint32 value follows the key and its 4-byte type tag
    key = b"qwen2.context_length"
    ctx = data.index(key) + len(key) + 4
    bad = tmp_path / "bad_ctx.gguf"
    _flip(a, bad, ctx)
    diffs = oracle.compare_gguf(bad, a)
    assert len(diffs) == 1 and diffs[0].startswith("qwen2.context_length:"), diffs
    assert list(oracle.metadata_diff(bad, a)["different"]) == ["qwen2.context_length"]
    assert oracle.compare_gguf(bad, a, check_hparams=False) == []

    # a token string: first length-prefixed "<|im_start|>" is the tokens array entry 151644
    needle = (12).to_bytes(8, "little") + b"<|im_start|>"
    tok = data.index(needle) + 8 + 3  # the 'i' of im_start
    bad = tmp_path / "bad_tok.gguf"
    _flip(a, bad, tok)
    diffs = oracle.compare_gguf(bad, a)
    assert len(diffs) == 1 and diffs[0].startswith("tokenizer.ggml.tokens: 1 of 151936 entries differ; first at [151644]"), diffs
    assert oracle.compare_gguf(bad, a, check_tokenizer=False) == []


def test_fast_reader_agrees_with_gguf_reader(qwen2_ref_pair: tuple[Path, Path]) -> None:
    gguf = pytest.importorskip("gguf")
    a, _ = qwen2_ref_pair
    ours = oracle.read_gguf(a)
    ref = gguf.GGUFReader(str(a), "r")
    ref_kv = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.kv) == list(ref_kv)
    for key, field in ref_kv.items():
        kv = ours.kv[key]
        assert kv.types == tuple(int(t) for t in field.types), key
        if kv.is_array:
            got = kv.raw if isinstance(kv.raw, list) else [x.tobytes() for x in kv.raw]
            want = [field.parts[i].tobytes() for i in field.data]
            assert got == want, key
        else:
            assert kv.raw == b"".join(field.parts[i].tobytes() for i in field.data), key
    assert ours.alignment == ref.alignment
    assert ours.data_offset == ref.data_offset
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for t, r in zip(ours.tensors, ref.tensors):
        assert t.ggml_type == int(r.tensor_type), t.name
        assert list(t.shape) == [int(x) for x in r.shape], t.name
        assert t.n_bytes == r.n_bytes, t.name
        assert ours.data_offset + t.offset == r.data_offset, t.name
        assert np.array_equal(ours.tensor_bytes(t), np.asarray(r.data).reshape(-1).view(np.uint8)), t.name


@pytest.mark.parametrize(
    "arch,outtype",
    [("qwen2", "f16"), ("qwen3", "bf16"), ("qwen2moe", "q8_0"), ("qwen3moe", "f32")],
)
def test_reference_converts_every_arch(
    reference_ready: Path, checkpoint_factory: Callable[..., Path], tmp_path: Path, arch: str, outtype: str
) -> None:
    ckpt = checkpoint_factory(arch, "bf16", 2, "hub")
    out = oracle.run_reference_converter(ckpt, outtype, tmp_path / f"{arch}.gguf")
    f = oracle.read_gguf(out)
    assert f.kv["general.architecture"].value() == arch
    assert f.kv["tokenizer.ggml.pre"].value() == "qwen2"
    assert len(f.kv["tokenizer.ggml.tokens"].raw) == 151936
    names = {t.name for t in f.tensors}
    assert "token_embd.weight" in names and "output_norm.weight" in names
    if arch.endswith("moe"):
        assert {"blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight", "blk.0.ffn_down_exps.weight"} <= names


def test_unknown_outtype_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        oracle.run_reference_converter(tmp_path, "q4_0", tmp_path / "x.gguf")
