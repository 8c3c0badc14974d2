#!/usr/bin/env python3
"""Record what bitnet.cpp's own flow writes for a tiny BitNet b1.58 2B-4T-style checkpoint, as an
I2_S GGUF, in `bitnet_cpp_i2s.json` (a few KB: the file itself is 74 MB, nearly all vocabulary and
f16 embedding).

Not run in CI. Needs a bitnet.cpp build and a Python with numpy<2 for its scripts (README.md,
"Building bitnet.cpp"); run it with bitconv's Python (torch + transformers build the fixture):

    .venv/bin/python tests/golden/make_golden_gguf.py --bitnet /work/bitnet-build/BitNet \\
        --build /work/bitnet-build/build-i2s --bitnet-python /work/bitnet-venv/bin/python \\
        --work /work/bitnet-build/golden-gguf

The flow is the one bitnet.cpp documents for BitNetForCausalLM (utils/convert-helper-bitnet.py):
`preprocess-huggingface-bitnet.py` (ternarizes the seven linears in torch float32: W_t / s), then
`convert-ms-to-gguf-bitnet.py --vocab-type bpe --outtype f32`, then `llama-quantize f32.gguf
out.gguf I2_S 1` (one thread: more corrupt the scales). torch's float32 mean of more than 32768
values depends on the preprocess process's thread count, so the flow runs twice, with
OMP_NUM_THREADS=1 (the golden) and 2 (recorded as `scale_threads2`, to show the dependence).

The JSON keeps, for the one-thread file: the GGUF version, alignment, every key in file order with
its value type and value (arrays of more than 16 items as count + sha256 of their bytes), every
tensor in file order (type, ggml dims, offset, size, sha256 of its meaningful bytes; for I2_S the
sha256 of the codes and the f32 scale), and the sha256 of the whole file with the 28 uninitialised
bytes after each I2_S scale set to zero. With the checkpoint regenerated from `fixture`, a test can
rebuild that file byte for byte (tests/test_gguf_ternary_source.py).

Checks made here, independently of bitconv: the I2_S codes unpacked by this script (FORMATS.md
layout) equal torch's ternarization of the checkpoint, the scales equal torch's f32(1/inv) at one
and two threads, F32/F16 tensors are the checkpoint's values widened/rounded, and the two runs
differ in nothing but scales.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path.insert(0, str(TESTS))

import gguf_raw  # noqa: E402

OUT_JSON = HERE / "bitnet_cpp_i2s.json"
#: fixtures_bitnet.make_bitnet_checkpoint arguments: hidden 256 is the smallest that keeps
#: token_embd F16 (llama-quantize picks Q8_0 unless ne[0] % 256 == 0); intermediate 512 gives a
#: second row length (ffn_down K = 512); every K is a multiple of 256 (tq1_0/tq2_0 and i2_s's 128).
FIXTURE = dict(form="master", dtype="bf16", seed=0, hidden=256, layers=2, intermediate=512, heads=4, kv_heads=2)
INLINE_ARRAY_MAX = 16
BITNET_COMMIT = "1876a3ef"
LLAMA_TREE = "ygqdan/BitNet-linux 6d113cd2 3rdparty/llama.cpp (+ common/cmake/build-info-gen-cpp.cmake from Eddie-Wang1120/llama.cpp 20f1789d)"
HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.attn_sub_norm": "attn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm"}


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def bitnet_flow(ckpt: Path, work: Path, threads: int, args: argparse.Namespace) -> Path:
    """bitnet.cpp's preprocess → f32 GGUF → llama-quantize I2_S 1, preprocess at `threads` torch threads."""
    ms = work / f"ms-t{threads}"
    shutil.rmtree(ms, ignore_errors=True)
    ms.mkdir(parents=True)
    for f in ckpt.glob("*.json"):
        shutil.copyfile(f, ms / f.name)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=str(args.bitnet / "3rdparty" / "llama.cpp" / "gguf-py"))
    log = work / f"flow-t{threads}.log"
    log.unlink(missing_ok=True)
    utils = args.bitnet / "utils"
    run([args.bitnet_python, str(utils / "preprocess-huggingface-bitnet.py"), "--input",
         str(ckpt / "model.safetensors"), "--output", str(ms / "model.safetensors")], log, env)
    f32 = work / f"ms-f32-t{threads}.gguf"
    run([args.bitnet_python, str(utils / "convert-ms-to-gguf-bitnet.py"), str(ms), "--vocab-type", "bpe",
         "--outtype", "f32", "--concurrency", "1", "--outfile", str(f32)], log, env)
    out = work / f"bitnet-i2_s-t{threads}.gguf"
    run([str(args.build / "bin" / "llama-quantize"), str(f32), str(out), "I2_S", "1"], log, env)
    f32.unlink()
    shutil.rmtree(ms)
    return out


def unpack_i2s(data: bytes, m: int, k: int) -> np.ndarray:
    """FORMATS.md: groups of 128 values → 32 bytes; byte j holds values j, 32+j, 64+j, 96+j in bit
    pairs 7-6, 5-4, 3-2, 1-0; code = value + 1."""
    g = np.frombuffer(data, dtype=np.uint8, count=m * k // 4).reshape(-1, 32)
    vals = np.stack([(g >> s) & 3 for s in (6, 4, 2, 0)], axis=1)  # [groups, 4, 32]: value 32*i + j
    return (vals.reshape(m, k).astype(np.int8) - 1)


def torch_reference(ckpt: Path) -> dict[str, tuple[np.ndarray, dict[int, np.float32]]]:
    """GGUF name → (torch codes, {threads: torch f32(1/inv)}) of every ternary linear."""
    import torch

    import fixtures_bitnet as fb

    weights = fb.load_safetensors(ckpt)
    out = {}
    saved = torch.get_num_threads()
    try:
        for name, w in weights.items():
            if not fb.is_ternary_weight(name):
                continue
            scales = {}
            for t in (1, 2):
                torch.set_num_threads(t)
                codes, scale = fb.ternarize(w)
                scales[t] = scale
            out[gguf_name(name)] = (codes, scales)
    finally:
        torch.set_num_threads(saved)
    return out


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    parts = hf.split(".")
    assert parts[0] == "model" and parts[1] == "layers", hf
    return f"blk.{parts[2]}.{HF_TO_GGUF['.'.join(parts[3:-1])]}.weight"


def kv_record(kv: gguf_raw.KV) -> dict:
    rec = {"key": kv.key, "type": gguf_raw.VALUE_TYPES[kv.vtype]}
    if kv.vtype != 9:
        rec["value"] = kv.value
        return rec
    rec["item_type"] = gguf_raw.VALUE_TYPES[kv.item_type]
    rec["count"] = kv.count
    if kv.count <= INLINE_ARRAY_MAX:
        rec["value"] = [v.item() if hasattr(v, "item") else v for v in kv.value]
    else:
        rec["sha256"] = gguf_raw.sha256(kv.raw)  # item type id, count, items as they lie in the file
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bitnet", type=Path, required=True, help="microsoft/BitNet checkout (with 3rdparty/llama.cpp)")
    ap.add_argument("--build", type=Path, required=True, help="its i2_s build (bin/llama-quantize)")
    ap.add_argument("--bitnet-python", required=True, help="a Python with numpy<2, torch, safetensors")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (kept: the GGUF files land there)")
    ap.add_argument("--out", type=Path, default=OUT_JSON)
    args = ap.parse_args()
    args.bitnet, args.build, args.work = args.bitnet.resolve(), args.build.resolve(), args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)

    import torch

    import fixtures_bitnet as fb

    ckpt = args.work / "bitnet-tiny"
    shutil.rmtree(ckpt, ignore_errors=True)
    fb.make_bitnet_checkpoint(ckpt, **FIXTURE)
    files = {t: bitnet_flow(ckpt, args.work, t, args) for t in (1, 2)}
    g1, g2 = gguf_raw.read(files[1]), gguf_raw.read(files[2])
    ref = torch_reference(ckpt)
    weights = fb.load_safetensors(ckpt)

    assert [(kv.key, kv.raw) for kv in g1.kvs] == [(kv.key, kv.raw) for kv in g2.kvs], "metadata differs by threads"
    tensors = []
    zeroed = bytearray(files[1].read_bytes())
    n_scale_diff = 0
    for t in g1.tensors:
        t2 = g2.tensor(t.name)
        assert (t2.ne, t2.type_id, t2.offset) == (t.ne, t.type_id, t.offset), t.name
        data, data2 = g1.tensor_bytes(t.name), g2.tensor_bytes(t.name)
        rec = {"name": t.name, "type": t.type_name, "type_id": t.type_id, "ne": t.ne, "offset": t.offset,
               "nbytes": t.nbytes}
        if t.type_name == "I2_S":
            k, m = t.ne
            n = m * k // 4
            assert data[:n] == data2[:n], f"{t.name}: codes differ by threads"
            codes, scales = ref[t.name]
            assert np.array_equal(unpack_i2s(data, m, k), codes), f"{t.name}: codes are not torch's"
            scale = np.frombuffer(data[n:n + 4], dtype="<f4")[0]
            scale2 = np.frombuffer(data2[n:n + 4], dtype="<f4")[0]
            assert scale == scales[1] and scale2 == scales[2], (t.name, scale, scales, scale2)
            n_scale_diff += int(scale != scale2)
            rec.update(codes_sha256=gguf_raw.sha256(data[:n]), scale=float(scale), scale_hex=data[n:n + 4].hex(),
                       scale_threads2=float(scale2), scale_threads2_hex=data2[n:n + 4].hex())
            zeroed[g1.data_start + t.offset + n + 4:g1.data_start + t.offset + n + 32] = bytes(28)
        else:
            assert data == data2, t.name
            hf = {gguf_name(h): h for h in weights}[t.name]
            w = weights[hf].to(torch.float32).numpy()
            want = w.astype(np.float16 if t.type_name == "F16" else np.float32)
            assert data == want.tobytes(), f"{t.name}: not the checkpoint's values"
        rec["sha256"] = gguf_raw.sha256(gguf_raw.i2s_meaningful(t.type_name, t.ne, data))
        tensors.append(rec)
    assert g1.data_start + max(t.offset + t.nbytes for t in g1.tensors) == g1.size

    golden = {
        "what": "bitnet.cpp's own I2_S GGUF of a tiny BitNetForCausalLM (tests/golden/make_golden_gguf.py)",
        "made_with": {
            "bitnet": f"microsoft/BitNet {BITNET_COMMIT}", "llama_cpp": LLAMA_TREE,
            "flow": ["preprocess-huggingface-bitnet.py (OMP_NUM_THREADS=1)",
                     "convert-ms-to-gguf-bitnet.py --vocab-type bpe --outtype f32 --concurrency 1",
                     "llama-quantize F32.gguf OUT.gguf I2_S 1"],
            "torch": torch.__version__,
        },
        "fixture": FIXTURE,
        "gguf_version": g1.version,
        "alignment": g1.alignment,
        "data_start": g1.data_start,
        "file_bytes": g1.size,
        "file_sha256_pads_zeroed": hashlib.sha256(zeroed).hexdigest(),
        "scales_differing_at_two_threads": n_scale_diff,
        "metadata": [kv_record(kv) for kv in g1.kvs],
        "tensors": tensors,
    }
    args.out.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): {len(g1.kvs)} keys, {len(tensors)} tensors, "
          f"{n_scale_diff} of {sum(t['type'] == 'I2_S' for t in tensors)} scales differ at two threads")


if __name__ == "__main__":
    main()
