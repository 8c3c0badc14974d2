"""FP8 dequantization (bitconv/quant/fp8.py) against torch: float8_e4m3fn decoding of every byte, and
llama.cpp's dequant_simple (repeat_interleave the block scales, cut to the weight, one float32
multiply) written in torch, on shapes that leave partial blocks."""
from __future__ import annotations

import numpy as np
import pytest

from bitconv.quant import fp8

torch = pytest.importorskip("torch")


def test_e4m3_table_equals_torch() -> None:
    codes = np.arange(256, dtype=np.uint8)
    ref = torch.from_numpy(codes).view(torch.float8_e4m3fn).float().numpy()
    got = fp8.e4m3_to_f32(codes)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    assert np.array_equal(got[~np.isnan(got)].view(np.uint32), ref[~np.isnan(ref)].view(np.uint32))


def test_e5m2_equals_torch() -> None:
    codes = np.arange(256, dtype=np.uint8)
    ref = torch.from_numpy(codes).view(torch.float8_e5m2).float().numpy()
    got = fp8.e5m2_to_f32(codes)
    ok = ~np.isnan(ref)
    assert np.array_equal(np.isnan(got), ~ok) and np.array_equal(got[ok], ref[ok])


def dequant_simple(weight: "torch.Tensor", scale: "torch.Tensor", block: tuple[int, int]) -> np.ndarray:
    """llama.cpp conversion/base.py dequant_simple, as written there."""
    scale = scale.float()
    for i, size in enumerate(block):
        scale = scale.repeat_interleave(size, i)
    scale = scale[tuple(slice(0, size) for size in weight.shape)]
    return (weight.float() * scale).numpy()


@pytest.mark.parametrize("scale_dtype", ["bf16", "f32"])
@pytest.mark.parametrize("shape,block", [((300, 200), (128, 128)), ((64, 192), (128, 128)), ((50, 70), (16, 32))])
def test_dequantize_equals_llamacpp(shape: tuple[int, int], block: tuple[int, int], scale_dtype: str) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g).to(torch.float8_e4m3fn)
    gn, gk = -(-shape[0] // block[0]), -(-shape[1] // block[1])
    scale = (torch.rand((gn, gk), generator=g) * 0.01 + 1e-4).to(torch.bfloat16 if scale_dtype == "bf16" else torch.float32)
    ref = dequant_simple(w, scale, block)
    codes = w.view(torch.uint8).numpy()
    got = fp8.dequantize(codes, scale.float().numpy(), block)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
    # a slab of rows starting on a block boundary, with its block rows of the scale
    lo, hi = block[0], min(shape[0], 2 * block[0] + 5)
    part = fp8.dequantize(codes[lo:hi], scale.float().numpy()[1:], block)
    assert np.array_equal(part, ref[lo:hi])


def test_options_refused() -> None:
    from bitconv.errors import CheckpointError

    for qc, phrase in [({"fmt": "e5m2"}, "fmt 'e5m2'"), ({"activation_scheme": "static"}, "activation_scheme 'static'"),
                       ({"weight_block_size": [128]}, "weight_block_size")]:
        with pytest.raises(CheckpointError, match=phrase):
            fp8.Fp8Scheme({"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128], **qc})
