"""Ternary numerics and the i2_s layout, checked against torch (the references' arithmetic),
transformers' own HF packing functions, and an unpacker written from FORMATS.md alone."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.quant.i2s import I2S, pack_i2s
from bitconv.quant.ternary import (TernaryScale, absmean_scale, hf_weight_scale_to_scale, pack_hf_packed,
                                   ternarize, unpack_hf_packed)

from independent import unpack_i2s

torch = pytest.importorskip("torch")


def torch_reference(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    t = torch.from_numpy(w).float()
    inv = 1.0 / t.abs().mean().clamp(min=1e-5)
    codes = (t * inv).round().clamp(-1, 1).to(torch.int8).numpy()
    return codes, np.float32((1.0 / inv).item())


@pytest.mark.parametrize("shape", [(64, 256), (300, 512), (7, 128), (1024, 1536)])
@pytest.mark.parametrize("seed", [0, 1])
def test_ternarize_matches_torch(shape, seed):
    w = (np.random.default_rng(seed).standard_normal(shape) * 0.02).astype(np.float32)
    ref_codes, ref_scale = torch_reference(w)
    st_ = absmean_scale([w[i:i + 100] for i in range(0, shape[0], 100)])
    assert abs(int(np.float32(st_.scale).view(np.int32)) - int(ref_scale.view(np.int32))) <= 1
    codes = ternarize(w, st_)
    assert np.array_equal(codes, ref_codes) or np.float32(st_.scale) != ref_scale


def test_all_zero_tensor_takes_the_epsilon_floor():
    s = absmean_scale([np.zeros((4, 128), np.float32)])
    assert s.inv == np.float32(1) / np.float32(1e-5)
    assert not ternarize(np.zeros((4, 128), np.float32), s).any()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), k_groups=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       scale=st.floats(1e-6, 1e3, allow_nan=False))
def test_i2s_pack_then_independent_unpack(n, k_groups, seed, scale):
    k = 128 * k_groups
    codes = np.random.default_rng(seed).integers(-1, 2, size=(n, k)).astype(np.int8)
    q = I2S()
    state = TernaryScale(inv=np.float32(1) / np.float32(scale), scale=np.float32(scale))
    blob = q.quantize(codes.astype(np.float32) * np.float32(scale), state).data.tobytes() + q.trailer(state)
    assert len(blob) == q.encoded_nbytes((n, k)) == n * k // 4 + 32
    got, got_scale, padding = unpack_i2s(blob, n, k)
    assert np.array_equal(got, codes)
    assert got_scale == np.float32(scale)
    assert padding == bytes(28)


def test_naive_sequential_packing_is_not_i2s():
    """The trap from FORMATS.md: 4 consecutive values per byte is a different (wrong) layout."""
    codes = np.random.default_rng(5).integers(-1, 2, size=(2, 128)).astype(np.int8)
    naive = (codes.reshape(-1, 4) + 1).astype(np.uint8)
    naive = (naive[:, 0] << 6) | (naive[:, 1] << 4) | (naive[:, 2] << 2) | naive[:, 3]
    assert not np.array_equal(pack_i2s(codes).reshape(-1), naive)


def test_i2s_writer_path_row_chunks_equal_whole_tensor():
    from bitconv.convert.arch.base import SourceTensor
    from bitconv.convert.plan import PlannedTensor
    from bitconv.formats.gguf_writer import encode_tensor

    rng = np.random.default_rng(9)
    w = (rng.standard_normal((1300, 256)) * 0.05).astype(np.float32)
    w[17] = 0
    q = I2S()
    src = SourceTensor("blk.0.attn_q.weight", w.shape, [])
    pt = PlannedTensor(src, q, q.encoded_nbytes(w.shape))
    with ThreadPoolExecutor(2) as pool:
        blob = encode_tensor(pt, w, pool, allow_nonfinite=False).tobytes()
    ref_codes, ref_scale = torch_reference(w)
    codes, scale, _ = unpack_i2s(blob, *w.shape)
    assert abs(int(np.float32(scale).view(np.int32)) - int(ref_scale.view(np.int32))) <= 1
    assert np.array_equal(codes, ref_codes)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 33), k=st.integers(1, 17), seed=st.integers(0, 2**31 - 1))
def test_hf_packing_matches_transformers(n, k, seed):
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    codes = np.random.default_rng(seed).integers(-1, 2, size=(n, k)).astype(np.int8)
    ours = pack_hf_packed(codes)
    theirs = pack_weights(torch.from_numpy(codes.astype(np.float32))).numpy()
    assert np.array_equal(ours, theirs)
    assert np.array_equal(unpack_hf_packed(ours, n), codes)
    unpack = getattr(unpack_weights, "_torchdynamo_orig_callable", unpack_weights)  # skip torch.compile
    back = unpack(torch.from_numpy(ours), dtype=torch.float32).numpy()[:n]
    assert np.array_equal(back, codes.astype(np.float32))


def test_packed_code_3_refused():
    from bitconv.errors import QuantizationError

    with pytest.raises(QuantizationError, match="code 3"):
        unpack_hf_packed(np.full((2, 4), 0xFF, np.uint8))


def test_weight_scale_conventions():
    """bitlinear stores inv (real W = W_t / weight_scale), autobitlinear stores s (W = W_t · it);
    the stored number is kept exact on its side."""
    bit = hf_weight_scale_to_scale(3.0, "bitlinear")
    assert bit.inv == np.float32(3.0) and bit.scale == np.float32(1) / np.float32(3)
    auto = hf_weight_scale_to_scale(3.0, "autobitlinear")
    assert auto.scale == np.float32(3.0) and auto.inv == np.float32(1) / np.float32(3)
