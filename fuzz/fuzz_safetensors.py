"""safetensors header reader, the shard index reader and `Checkpoint.open` over a scratch folder.

The first input byte picks the target: 0 a lone model.safetensors (`read_safetensors_header`);
1 the same inside a checkpoint folder (`Checkpoint.open`, and `inspect` of the folder);
2 model.safetensors.index.json beside two valid shards (`Checkpoint.open`); 3 and 4 the same as
1 and 2 with structure-aware edits of the JSON (`json_patch`); 5 config.json beside a valid
model.safetensors (`inspect` of the folder reads its quantization_config), 6 the same with edits.
"""
from __future__ import annotations

import functools
import json
import struct
import sys
from pathlib import Path

from fuzz.common import JSON_TOKENS, instrumented, json_patch, main, mode_prefixed, put, scratch, seed_dir

with instrumented(__name__ == "__main__"):
    import bitconv
    from bitconv.convert.checkpoint import Checkpoint, read_safetensors_header
    from bitconv.errors import BitconvError

NAME = "safetensors"
CONFIG = b'{"architectures": ["BitnetForCausalLM"], "model_type": "bitnet", "vocab_size": 64}'


@functools.cache
def _shards() -> dict[str, bytes]:
    """Two valid shards for the index target (a fixed 1-tensor file, without touching the seeds)."""
    def one(name: str) -> bytes:
        header = json.dumps({name: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
        return struct.pack("<Q", len(header)) + header + b"\0" * 8

    return {"model-00001-of-00002.safetensors": one("a.weight"),
            "model-00002-of-00002.safetensors": one("b.weight")}


#: config.json documents with each quantization_config shape inspect describes
CONFIGS = [
    {"architectures": ["BitNetForCausalLM"], "quantization_config": {
        "quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}},
    {"architectures": ["Qwen2ForCausalLM"], "quantization_config": {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128}}},
        "ignore": ["lm_head"]}},
    {"architectures": ["LlamaForCausalLM"], "quantization_config": {
        "quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}},
    {"architectures": ["Qwen2ForCausalLM"], "quantization_config": {
        "quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True, "sym": False,
        "checkpoint_format": "gptq"}},
    {"architectures": ["Qwen2ForCausalLM"], "quantization_config": {
        "quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": True}},
    {"architectures": ["Qwen3ForCausalLM"], "quantization_config": {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}},
]
SHARD_INDEX = (b'{"metadata": {"total_size": 16}, "weight_map": '
               b'{"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}')


@functools.cache
def _headers() -> tuple[list[object], bytes]:
    """The seed files' header JSON documents, and the data part of the first."""
    docs, tail = [], b""
    for f in sorted((seed_dir() / "safetensors").glob("*.safetensors")):
        raw = f.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        docs.append(json.loads(raw[8:8 + n]))
        tail = tail or raw[8 + n:]
    return docs, tail


@functools.cache
def _indexes() -> list[object]:
    return [json.loads((seed_dir() / "safetensors" / "model.safetensors.index.json").read_text()),
            json.loads(SHARD_INDEX)]


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 7, data[1:]
    if mode == 3:  # structure-aware: a seed's header JSON with values changed, its data kept
        header, tail = _headers()
        head = json_patch(body, header)
        body, mode = struct.pack("<Q", len(head)) + head + tail, 1
    elif mode == 4:
        body, mode = json_patch(body, _indexes()), 2
    elif mode == 6:
        body, mode = json_patch(body, CONFIGS), 5
    try:
        if mode == 0:
            folder = put(scratch() / "file", {"model.safetensors": body})
            read_safetensors_header(folder / "model.safetensors")
        elif mode == 1:
            folder = put(scratch() / "ckpt", {"config.json": CONFIG, "model.safetensors": body})
            Checkpoint.open(folder)
            bitconv.inspect(folder)
        elif mode == 5:
            shard = _shards()["model-00001-of-00002.safetensors"]
            folder = put(scratch() / "config", {"config.json": body, "model.safetensors": shard})
            bitconv.inspect(folder)
            Checkpoint.open(folder).architecture
        else:
            folder = put(scratch() / "sharded", {"config.json": CONFIG, "model.safetensors.index.json": body,
                                                 **_shards()})
            Checkpoint.open(folder)
    except BitconvError:
        pass


def seed_inputs(seeds: Path) -> list[bytes]:
    st = seeds / "safetensors"
    files = [f.read_bytes() for f in sorted(st.glob("*.safetensors"))]
    index = (st / "model.safetensors.index.json").read_bytes()
    return ([mode_prefixed(m, f) for f in files for m in (0, 1)]
            + [mode_prefixed(2, index), mode_prefixed(2, SHARD_INDEX)]
            + [mode_prefixed(m, b"\0" * 16) for m in (3, 4, 6)]
            + [mode_prefixed(5, json.dumps(c).encode()) for c in CONFIGS])


if __name__ == "__main__":
    seed_dir()
    main(NAME, TestOneInput, seed_inputs, sys.argv[1:], dictionary=JSON_TOKENS)
