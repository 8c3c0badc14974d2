"""A test packer: a float checkpoint (tests/fixtures.py) rewritten in the stored layout of a quantized
hub checkpoint — GPTQ, AWQ GEMM or FP8 — written from the documented layouts, independently of
bitconv's readers:

- GPTQ (AutoGPTQ `nn_modules/qlinear/qlinear_cuda_old.py` pack, GPTQModel `pack`): codes packed
  along K into int32 words, lowest bits first, 3 bits as one little-endian 96-bit stream per 32
  codes; zero points packed along N the same way; v1 (`checkpoint_format: "gptq"`) stores each zero
  point minus one; act-order (`desc_act`) quantizes the columns in a permuted order, its groups
  given per column by `g_idx`.
- AWQ GEMM (AutoAWQ `WQLinear_GEMM.from_linear`): codes and zero points packed along N, 8 per word
  with order_map [0, 2, 4, 6, 1, 3, 5, 7] (nibble i holds column order_map[i]).
- FP8 (Qwen3-*-FP8, DeepSeek-V3): float8_e4m3fn weights, one `weight_scale_inv` (amax / 448, which
  multiplies on reading) per [128, 128] block.
- compressed-tensors (llm-compressor): written by the compressed-tensors package itself (the
  reference): its calculate_qparams on the minmax observer's ranges, its compressors
  (PackedQuantizationCompressor, the naive / int / float ones) and its QuantizationConfig dumped as
  llm-compressor's ModelCompressor.update_config writes it. Only act-order groups (`weight_g_idx`),
  which compressed-tensors 0.20 no longer writes, are laid out here with the package's pack_to_int32.

Packing here goes through bit arrays (np.packbits), not the shifts the readers use. Every packer
returns, beside the folder, the float weight each linear is meant to decode to (`expected`), computed
from the codes, zero points and rounded scales it wrote.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _is_linear(name: str) -> bool:
    return name.startswith("model.layers.") and name.endswith(".weight") and name.split(".")[-2] in LINEARS


def _load(src: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in sorted(src.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _write(src: Path, dst: Path, tensors: dict[str, Any], qc: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copyfile(f, dst / f.name)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = qc
    (dst / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return dst


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes [..., M] (M·bits a multiple of 32) → int32 words [..., M·bits/32]: the codes' bits laid
    end to end, lowest first, cut into little-endian 32-bit words."""
    c = np.asarray(codes, dtype=np.uint8)
    bitarr = ((c[..., None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(*c.shape[:-1], -1)
    return np.packbits(bitarr, axis=-1, bitorder="little").view("<u4").view(np.int32)


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def gptq_quantize(w: np.ndarray, bits: int, group: int, sym: bool, perm: np.ndarray | None,
                  v1: bool) -> dict[str, np.ndarray]:
    """RTN in GPTQ's layout for a float weight [N, K] (the weights are round-to-nearest, not GPTQ's
    error feedback: the layout is what is tested). Returns qweight, qzeros, scales (f16), g_idx, and
    `expected` [N, K] float32."""
    n, k = w.shape
    maxq = 2**bits - 1
    group = k if group == -1 else group
    order = np.arange(k) if perm is None else perm
    g_idx = np.empty(k, dtype=np.int32)
    g_idx[order] = np.arange(k) // group  # act-order: groups follow the processing order
    n_groups = -(-k // group)
    scales = np.zeros((n_groups, n), np.float32)
    zeros = np.zeros((n_groups, n), np.int64)
    for g in range(n_groups):
        cols = w[:, g_idx == g]
        lo, hi = np.minimum(cols.min(1), 0), np.maximum(cols.max(1), 0)
        if sym:
            amax = np.maximum(-lo, hi)
            s = _f16(np.where(amax > 0, 2 * amax / maxq, 1.0))
            z = np.full(n, (maxq + 1) // 2)
        else:
            s = _f16(np.where(hi > lo, (hi - lo) / maxq, 1.0))
            z = np.clip(np.round(-lo / s), 1 if v1 else 0, maxq)  # v1 cannot store a zero point of 0
        scales[g], zeros[g] = s, z
    q = np.clip(np.round(w / scales[g_idx].T) + zeros[g_idx].T, 0, maxq).astype(np.int64)  # [N, K]
    expected = (scales[g_idx].T * (q - zeros[g_idx].T)).astype(np.float32)
    stored_zeros = (zeros - (1 if v1 else 0)) & maxq
    return {"qweight": pack_bits(q, bits).T.copy(),  # [K·bits/32, N]: packed along K
            "qzeros": pack_bits(stored_zeros, bits),  # [G, N·bits/32]: packed along N
            "scales": scales.astype(np.float16), "g_idx": g_idx, "expected": expected}


def awq_quantize(w: np.ndarray, group: int) -> dict[str, np.ndarray]:
    """AutoAWQ's asymmetric 4-bit grid (no activation-aware scaling: the layout is what is tested)."""
    n, k = w.shape
    g = w.reshape(n, k // group, group)
    lo, hi = g.min(-1), g.max(-1)  # [N, G]
    s = _f16((hi - lo) / 15)
    z = np.clip(np.round(-lo / s), 0, 15)
    q = np.clip(np.round(g / s[..., None]) + z[..., None], 0, 15)
    expected = ((q - z[..., None]) * s[..., None]).reshape(n, k).astype(np.float32)
    q, z = q.reshape(n, k).T.astype(np.uint8), z.T.astype(np.uint8)  # [K, N], [G, N]

    def pack(codes: np.ndarray) -> np.ndarray:  # nibble i of word c holds column 8c + AWQ_ORDER[i]
        r, cols = codes.shape
        grouped = codes.reshape(r, cols // 8, 8)[:, :, AWQ_ORDER]
        return pack_bits(grouped.reshape(r, cols), 4)

    return {"qweight": pack(q), "qzeros": pack(z), "scales": s.T.astype(np.float16), "expected": expected}


def fp8_quantize(w: np.ndarray, block: tuple[int, int], scale_dtype: str) -> dict[str, Any]:
    """DeepSeek-V3 / Qwen3-FP8 block quantization: scale = amax / 448 per block; weight =
    float8_e4m3fn(w / scale) (torch's round-to-nearest-even cast)."""
    import torch

    n, k = w.shape
    bn, bk = block
    gn, gk = -(-n // bn), -(-k // bk)
    pad = np.zeros((gn * bn, gk * bk), np.float32)
    pad[:n, :k] = w
    amax = np.abs(pad.reshape(gn, bn, gk, bk)).max(axis=(1, 3))
    tdtype = {"BF16": torch.bfloat16, "F32": torch.float32}[scale_dtype]
    scale_t = torch.from_numpy(np.where(amax > 0, amax / 448.0, 1.0).astype(np.float32)).to(tdtype)
    scale = scale_t.float().numpy()
    full = np.repeat(np.repeat(scale, bn, 0), bk, 1)[:n, :k]
    q = torch.from_numpy((w / full).astype(np.float32)).to(torch.float8_e4m3fn)
    expected = (q.float().numpy() * full).astype(np.float32)
    return {"weight": q, "weight_scale_inv": scale_t, "expected": expected}


def make_gptq(src: Path, dst: Path, *, bits: int = 4, group_size: int = 32, sym: bool = True,
              desc_act: bool = False, checkpoint_format: str = "gptq", seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """`src` as a GPTQ checkpoint (Qwen2.5-*-GPTQ-Int4's config keys); returns (dst, expected)."""
    import torch

    rng = np.random.default_rng(seed)
    tensors, expected = {}, {}
    for name, t in _load(src).items():
        if not _is_linear(name):
            tensors[name] = t
            continue
        w = t.float().numpy()
        perm = rng.permutation(w.shape[1]) if desc_act else None
        q = gptq_quantize(w, bits, group_size, sym, perm, checkpoint_format == "gptq")
        base = name.removesuffix(".weight")
        for part in ("qweight", "qzeros", "scales", "g_idx"):
            tensors[f"{base}.{part}"] = torch.from_numpy(q[part])
        expected[name] = q["expected"]
    qc = {"bits": bits, "group_size": group_size, "damp_percent": 0.01, "desc_act": desc_act, "sym": sym,
          "true_sequential": True, "model_name_or_path": None, "model_file_base_name": "model",
          "quant_method": "gptq", "static_groups": False}
    if checkpoint_format != "gptq":
        qc["checkpoint_format"] = checkpoint_format
    return _write(src, dst, tensors, qc), expected


def make_awq(src: Path, dst: Path, *, group_size: int = 32) -> tuple[Path, dict[str, np.ndarray]]:
    """`src` as an AWQ GEMM checkpoint (Qwen2.5-*-AWQ's config keys); returns (dst, expected)."""
    import torch

    tensors, expected = {}, {}
    for name, t in _load(src).items():
        if not _is_linear(name):
            tensors[name] = t
            continue
        q = awq_quantize(t.float().numpy(), group_size)
        base = name.removesuffix(".weight")
        for part in ("qweight", "qzeros", "scales"):
            tensors[f"{base}.{part}"] = torch.from_numpy(q[part])
        expected[name] = q["expected"]
    qc = {"bits": 4, "group_size": group_size, "modules_to_not_convert": None, "quant_method": "awq",
          "version": "gemm", "zero_point": True}
    return _write(src, dst, tensors, qc), expected


def make_fp8(src: Path, dst: Path, *, block: tuple[int, int] = (128, 128),
             scale_dtype: str = "BF16") -> tuple[Path, dict[str, np.ndarray]]:
    """`src` as a block-wise FP8 checkpoint (Qwen3-*-FP8's config keys); returns (dst, expected)."""
    tensors, expected = {}, {}
    for name, t in _load(src).items():
        if not _is_linear(name):
            tensors[name] = t
            continue
        q = fp8_quantize(t.float().numpy(), block, scale_dtype)
        tensors[name] = q["weight"]
        tensors[name + "_scale_inv"] = q["weight_scale_inv"]
        expected[name] = q["expected"]
    qc = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": list(block)}
    return _write(src, dst, tensors, qc), expected


def _ct_ranges(w: Any, strategy: str, group: int | None, block: tuple[int, int] | None) -> tuple[Any, Any]:
    """(min, max) as llm-compressor's minmax observer hands them to calculate_qparams."""
    import torch

    if strategy == "group":
        g = w.unflatten(-1, (w.shape[-1] // group, group))
        return g.amin(-1), g.amax(-1)
    if strategy == "channel":
        return w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    if strategy == "block":
        bn, bk = block
        n, k = w.shape
        pad = torch.nn.functional.pad(w, (0, -k % bk, 0, -n % bn))  # zeros do not move a range holding 0
        b = pad.reshape(pad.shape[0] // bn, bn, pad.shape[1] // bk, bk).transpose(1, 2).flatten(-2)
        return b.amin(-1), b.amax(-1)
    return w.amin().reshape(1), w.amax().reshape(1)


def ct_quantization_config(scheme: Any, fmt: str, ignore: list[str]) -> dict[str, Any]:
    """config.json's quantization_config as llm-compressor writes it (ModelCompressor.update_config)."""
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationConfig

    qc = QuantizationConfig(config_groups={"group_0": scheme}, format=fmt, quantization_status="compressed",
                            ignore=ignore)
    body = json.loads(json.dumps(qc.model_dump(exclude=["quant_method"])))
    return {"version": compressed_tensors.__version__, "quant_method": "compressed-tensors", "sparsity_config": {},
            "transform_config": {}, **body}


def make_compressed(src: Path, dst: Path, *, format: str = "pack-quantized", bits: int = 4, type: str = "int",
                    strategy: str = "group", group_size: int | None = 32, symmetric: bool = True,
                    block: tuple[int, int] | None = None, actorder_group: bool = False,
                    activations: bool = False, ignore: tuple[str, ...] = ("lm_head",),
                    seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """`src` as a compressed-tensors checkpoint in `format`, quantized (round to nearest) and compressed
    by the compressed-tensors package; `activations`: dynamic per-token input quantization of the
    weights' type (W8A8 int / FP8_DYNAMIC: nothing stored for it). `actorder_group`: columns in
    random groups given by `weight_g_idx` (pack-quantized, group strategy). Returns (dst, expected):
    each linear's float32 weight as llama.cpp's converter computes it, (q − z) · f32(s)."""
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    args = QuantizationArgs(num_bits=bits, type=type, symmetric=symmetric, strategy=strategy,
                            group_size=group_size if strategy == "group" else None,
                            block_structure=list(block) if block else None)
    acts = (QuantizationArgs(num_bits=8, type=type, symmetric=True, strategy="token", dynamic=True)
            if activations else None)
    scheme = QuantizationScheme(targets=["Linear"], weights=args, input_activations=acts, format=format)
    compressor = BaseCompressor.get_value_from_registry(format)
    rng = np.random.default_rng(seed)
    tensors, expected = {}, {}
    for name, t in _load(src).items():
        if not _is_linear(name):
            tensors[name] = t
            continue
        base = name.removesuffix(".weight")
        if actorder_group:  # columns in permuted groups: laid out here (the package no longer writes it)
            n, k = t.shape
            g_idx = np.empty(k, np.int64)
            g_idx[rng.permutation(k)] = np.arange(k) // group_size
            cols = torch.from_numpy(np.argsort(g_idx, kind="stable"))  # each group's columns, runs of group_size
            scale, zp = calculate_qparams(*_ct_ranges(t[:, cols], "group", group_size, None), args)
            gi = torch.from_numpy(g_idx)
            qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            x = torch.round(t.float() / scale.float()[:, gi] + zp.float()[:, gi]).clamp(qmin, qmax).to(torch.int8)
            stored = {"weight_packed": pack_to_int32(x, bits), "weight_scale": scale,
                      "weight_shape": torch.tensor([n, k]), "weight_g_idx": gi.to(torch.int32)}
            if not symmetric:
                stored["weight_zero_point"] = pack_to_int32(zp.to(torch.int8), bits, packed_dim=0)
            q, z, cols_of = x, (zp.to(torch.int8) if not symmetric else torch.zeros_like(scale, dtype=torch.int8)), gi
        else:
            scale, zp = calculate_qparams(*_ct_ranges(t, strategy, group_size, block), args)
            state = {"weight": t, "weight_scale": scale, "weight_zero_point": zp}
            stored = compressor.compress(state, scheme)
            cols_of = None
            if format == "pack-quantized":
                n, k = stored["weight_shape"].tolist()
                q = unpack_from_int32(stored["weight_packed"], bits, torch.Size([n, k]))
                z = (unpack_from_int32(stored["weight_zero_point"], bits, torch.Size([n, scale.shape[1]]), packed_dim=0)
                     if not symmetric else torch.zeros_like(scale, dtype=torch.int8))
            else:
                q = stored["weight"]
                z = stored.get("weight_zero_point", torch.zeros_like(scale))
        expected[name] = _ct_expected(q, z, scale, cols_of, strategy, group_size, block)
        for part, v in stored.items():
            tensors[f"{base}.{part}"] = v
    return _write(src, dst, tensors, ct_quantization_config(scheme, format, list(ignore))), expected


def _ct_expected(q: Any, z: Any, s: Any, g_idx: Any, strategy: str, group: int | None,
                 block: tuple[int, int] | None) -> np.ndarray:
    """(q − z) · s in float32, the scale and zero point spread over their rows and columns."""
    n, k = q.shape
    qf, zf, sf = q.float().numpy(), z.float().numpy().reshape(s.shape[0], -1), s.float().numpy().reshape(s.shape[0], -1)
    if g_idx is not None:
        cols = g_idx.numpy()
    elif strategy == "group":
        cols = np.arange(k) // group
    elif strategy == "block":
        cols = np.arange(k) // block[1]
        rows = np.arange(n) // block[0]
        zf, sf = zf[rows], sf[rows]
    else:
        cols = np.zeros(k, np.int64)
    if sf.shape[0] == 1:
        zf, sf = np.repeat(zf, n, 0), np.repeat(sf, n, 0)
    return ((qf - zf[:, cols]) * sf[:, cols]).astype(np.float32)


def float_copy(src: Path, dst: Path, expected: dict[str, np.ndarray]) -> Path:
    """`src` (quantized, any scheme) as the float checkpoint it stands for: its float tensors in their
    stored dtypes, every quantized linear `<module>.weight` as its float32 `expected` weight (every
    stored `<module>.*` part of it dropped but its bias: qweight…, weight_packed…, weight.absmax…,
    SCB…), no quantization_config."""
    import torch

    modules = tuple(name.removesuffix("weight") for name in expected)
    tensors = {k: v for k, v in _load(src).items() if not k.startswith(modules) or k.endswith(".bias")}
    tensors.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in expected.items()})
    out = _write(src, dst, tensors, {})
    cfg = json.loads((out / "config.json").read_text())
    del cfg["quantization_config"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out
