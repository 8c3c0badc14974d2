"""bitsandbytes checkpoints for the source tests, made by bitsandbytes itself (never by bitconv):

- `save_quantized`: transformers' quantize-on-load on CPU (`BitsAndBytesConfig(load_in_4bit=True,
  bnb_4bit_quant_type=…, bnb_4bit_use_double_quant=…)` / `load_in_8bit=True`) then
  `save_pretrained`, exactly as a user makes a hub bnb checkpoint;
- `pack_4bit`: what transformers cannot be asked for (BitsAndBytesConfig has no block size):
  `bitsandbytes.functional.quantize_4bit` with another block size (128, which the tiny models'
  K = 64 / 192 do not divide, so blocks straddle rows) on weights cast to float16, written with
  `QuantState.as_dict(packed=True)` under transformers' names and its config keys.

`reference_4bit` / `reference_int8` are bitsandbytes' own dequantization of the stored tensors.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def save_quantized(src: Path, dst: Path, quant: str, *, double: bool = False, compute: str = "float32",
                   skip: list[str] | None = None) -> Path:
    """`src` quantized on load by transformers + bitsandbytes on CPU, saved to `dst`."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if quant == "int8":
        cfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    else:
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant, bnb_4bit_use_double_quant=double,
                                 bnb_4bit_compute_dtype=getattr(torch, compute), llm_int8_skip_modules=skip)
    model = AutoModelForCausalLM.from_pretrained(str(src), device_map="cpu", quantization_config=cfg)
    model.save_pretrained(str(dst))
    for f in src.iterdir():  # the tokenizer, as a user saves it beside the model
        if f.is_file() and not (dst / f.name).exists() and not f.name.startswith("model.safetensors"):
            shutil.copyfile(f, dst / f.name)
    return dst


def pack_4bit(src: Path, dst: Path, quant: str, *, blocksize: int, double: bool) -> Path:
    """`src`'s decoder linears through bitsandbytes.functional.quantize_4bit (float16, `blocksize`),
    every other tensor as it is; transformers' tensor names and quantization_config keys."""
    import torch
    import bitsandbytes.functional as F
    from safetensors.torch import load_file, save_file

    tensors: dict[str, Any] = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    out: dict[str, Any] = {}
    for name, t in tensors.items():
        if not (name.startswith("model.layers.") and name.endswith(".weight") and name.split(".")[-2] in LINEARS):
            out[name] = t
            continue
        packed, state = F.quantize_4bit(t.to(torch.float16), blocksize=blocksize, quant_type=quant,
                                        compress_statistics=double)
        out[name] = packed
        for key, v in state.as_dict(packed=True).items():
            out[f"{name}.{key}"] = v
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model.safetensors"):
            shutil.copyfile(f, dst / f.name)
    save_file({k: v.contiguous() for k, v in out.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {
        "_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": "float16",
        "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": quant, "bnb_4bit_use_double_quant": double,
        "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None,
        "llm_int8_threshold": 6.0, "load_in_4bit": True, "load_in_8bit": False, "quant_method": "bitsandbytes"}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return dst


def _stored(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def reference(folder: Path, native: bool = True) -> dict[str, Any]:
    """HF weight name → bitsandbytes' own dequantization (float32 numpy) of each quantized linear:
    `dequantize_4bit` with the QuantState bitsandbytes rebuilds from the stored tensors
    (QuantState.from_dict), `int8_vectorwise_dequant` for LLM.int8. `native=False` runs the 4-bit
    dequantization through bitsandbytes' default (torch) kernel instead of the CPU library, whose
    AVX-512 path in 0.50 indexes absmax per row when the block size does not divide K."""
    import torch
    import bitsandbytes.functional as F

    raw = _stored(folder)
    out = {}
    for name, t in raw.items():
        module = name.removesuffix(".weight")
        if not name.endswith(".weight"):
            continue
        if f"{name}.absmax" in raw:
            qs = {k[len(name) + 1:]: v for k, v in raw.items() if k.startswith(name + ".")}
            state = F.QuantState.from_dict(qs, torch.device("cpu"))
            if native:
                w = F.dequantize_4bit(t, state)
            else:
                from bitsandbytes.backends.default import ops
                from bitsandbytes.backends.utils import _get_4bit_code

                absmax = state.absmax
                if state.nested:
                    absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
                compute = getattr(ops._dequantize_4bit_compute, "__wrapped__", ops._dequantize_4bit_compute)
                w = compute(t.reshape(-1), absmax.float(), _get_4bit_code(state.quant_type, t.device),
                            state.blocksize, state.shape, state.dtype)
            out[name] = w.float().numpy()
        elif f"{module}.SCB" in raw:
            out[name] = F.int8_vectorwise_dequant(t, raw[f"{module}.SCB"]).numpy()
    return out
