#!/usr/bin/env python3
"""Regenerate the golden tensor bytes in this folder from the reference implementation.

Not run in CI.  It needs a checkout of microsoft/BitNet (with its llama.cpp fork under
3rdparty/llama.cpp) and, for the I2_S files, a build of it (see README.md).  Run it with a Python
that has numpy<2 (the fork's gguf-py and converter need it), torch, safetensors and sentencepiece:

    /tmp/bitnet-cpp/venv/bin/python tests/golden/make_golden.py \
        --bitnet /tmp/bitnet-cpp/BitNet --build /tmp/bitnet-cpp/build-i2s

What it does (everything seeded, byte-for-byte reproducible):

* TL1/TL2: for each case it builds a ternary matrix (codes in {-1,0,1}, M x K, K contiguous) and
  a float32 scale, then calls the upstream ``transform_to_tl1`` / ``transform_to_tl2`` from
  ``utils/convert-hf-to-gguf-bitnet.py`` (loaded from the checkout at run time, never copied here)
  the way the converter calls them: on ``codes * scale`` in float32, with the tiling read from
  ``include/kernel_config.ini`` in the current directory.  The tensor bytes are what the fork's
  gguf writer puts in the file: payload, zero pad to a multiple of 32, the float32 scale, 28 zero
  bytes.  Unless --no-e2e, it then runs the real converter (``--outtype tl1/tl2``) on tiny
  1bitLLM-style checkpoints that contain the same matrices and checks that the bytes the converter
  wrote into the GGUF (cut at the stride the tensor-info offsets give) equal the golden bytes.
* I2_S: ``i2s_quant.cpp`` (in this folder) is compiled against the build's libggml and calls
  ``ggml_quantize_chunk(GGML_TYPE_I2_S, ...)`` once over all rows (what ``llama-quantize ... I2_S 1``
  does per tensor) on ``codes * scale``.  Its output buffer is zeroed first, so the 28 pad bytes are
  zeros here (llama-quantize leaves them uninitialised).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# name: (kind, M, K, BM, BK, bm, seed)
TL_CASES = {
    "tl2_rem":   ("tl2", 256, 256, 128, 96, 32, 101),   # K3 = 192, K2 = 64
    "tl2_norem": ("tl2", 128, 384, 64, 192, 32, 102),   # K3 = 384, K2 = 0
    "tl1_bm64":  ("tl1", 256, 256, 128, 64, 64, 103),
    "tl1_bm32":  ("tl1", 128, 256, 64, 128, 32, 104),
}
# name: (M, K, seed)
I2S_CASES = {
    "i2s_256x256": (256, 256, 201),
    "i2s_128x768": (128, 768, 202),
}
CODE_STEP = np.float32(2.0 ** -5)  # |W| of a non-zero master weight; power of two keeps sums exact


# ----------------------------------------------------------------------------- inputs

def make_codes(M: int, K: int, seed: int) -> np.ndarray:
    """Random ternary codes with two all-zero rows, an all-zero 32-column band and a zero 32x32 block."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, size=(M, K), dtype=np.int8)
    codes[1] = 0
    codes[M - 2] = 0
    codes[:, 64:96] = 0                 # every row: columns 64..95 zero
    codes[32:64, K - 32:K] = 0          # one 32x32 block at the end of the rows
    return codes


def absmean_scale(master: np.ndarray) -> np.float32:
    """scale = f32(1 / f32(1 / mean|W|)) in float32, as BitnetModel.weight_quant computes it.

    With |W| a power of two times an integer count the float32 sum is exact in any order, so this
    equals torch's value bit for bit (checked against the real converter in the e2e step)."""
    a = np.abs(master.astype(np.float32))
    mean = np.float32(a.sum(dtype=np.float32)) / np.float32(a.size)
    inv = np.float32(1.0) / np.maximum(np.float32(mean), np.float32(1e-5))
    return np.float32(np.float32(1.0) / inv)


# ----------------------------------------------------------------------------- upstream code

def load_upstream_converter(bitnet: Path):
    """Import utils/convert-hf-to-gguf-bitnet.py from the checkout (not copied into this repo)."""
    utils = bitnet / "utils"
    gguf_py = bitnet / "3rdparty" / "llama.cpp" / "gguf-py"
    for p in (str(gguf_py), str(utils)):
        if p not in sys.path:
            sys.path.insert(0, p)
    spec = importlib.util.spec_from_file_location("bitnet_convert_hf", utils / "convert-hf-to-gguf-bitnet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def kernel_config_text(shapes: list[tuple[int, int, int, int, int]]) -> str:
    """include/kernel_config.ini in codegen_tl1/tl2's format (one section per (m, k))."""
    out = []
    for i, (m, k, BM, BK, bm) in enumerate(shapes):
        out.append(f"[Kernels_{i}]\nm = {m}\nk = {k}\nbm = {BM}\nbk = {BK}\nbmm = {bm}\n")
    return "\n".join(out)


@contextlib.contextmanager
def in_dir_with_kernel_config(shapes):
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="golden-kcfg-") as d:
        (Path(d) / "include").mkdir()
        (Path(d) / "include" / "kernel_config.ini").write_text(kernel_config_text(shapes))
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(old)


def pad32(n: int) -> int:
    return (n + 31) // 32 * 32


def tl_tensor_bytes(mod, kind: str, codes: np.ndarray, scale: np.float32, BM: int, BK: int, bm: int) -> bytes:
    M, K = codes.shape
    w = codes.astype(np.float32) * scale          # what BitnetModel.weight_quant hands on
    with in_dir_with_kernel_config([(M, K, BM, BK, bm)]):
        fn = mod.transform_to_tl1 if kind == "tl1" else mod.transform_to_tl2
        data, s = fn(w)
    assert data.dtype == np.uint8 and np.asarray(s).dtype == np.float32
    payload = data.tobytes()
    # fork gguf_writer: tensor data, pad to 32, then the hidden `<name>_scale` f32 tensor, pad to 32
    return payload + b"\0" * (pad32(len(payload)) - len(payload)) + np.float32(s).tobytes() + b"\0" * 28


# ----------------------------------------------------------------------------- GGUF reading

_GGUF_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_tensors(path: Path) -> dict[str, dict]:
    """Minimal GGUF v3 reader: tensor infos and the bytes from each tensor's offset to the next one's."""
    buf = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = buf[pos:pos + n].decode()
        pos += n
        return s

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(_GGUF_SCALAR[t])

    assert buf[:4] == b"GGUF"
    pos = 4
    take("I")
    n_t, n_kv = take("Q"), take("Q")
    kv = {}
    for _ in range(n_kv):
        k = string()
        kv[k] = value(take("I"))
    align = kv.get("general.alignment", 32)
    infos = []
    for _ in range(n_t):
        name = string()
        nd = take("I")
        dims = [take("Q") for _ in range(nd)]
        typ = take("I")
        off = take("Q")
        infos.append((name, dims, typ, off))
    data0 = (pos + align - 1) // align * align
    out = {}
    offs = sorted(i[3] for i in infos) + [len(buf) - data0]
    for name, dims, typ, off in infos:
        nxt = min(o for o in offs if o > off)
        out[name] = {"dims": dims, "type": typ, "offset": off, "stride": nxt - off,
                     "bytes": buf[data0 + off:data0 + nxt]}
    out["__kv__"] = kv
    return out


# ----------------------------------------------------------------------------- e2e via the real converter

def _sentencepiece_model(dest: Path) -> None:
    import sentencepiece as spm
    rng = np.random.default_rng(7)
    words = "the quick brown fox jumps over a lazy dog ternary weight table lookup kernel".split()
    corpus = dest / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(500)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(dest / "tokenizer"), vocab_size=320,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   minloglevel=2, hard_vocab_limit=False, num_threads=1)
    corpus.unlink()
    (dest / "tokenizer.vocab").unlink()


def write_onebit_checkpoint(dest: Path, hidden: int, inter: int, heads: int, kv_heads: int,
                            fixed: dict[str, np.ndarray], seed: int) -> None:
    """Tiny 1bitLLM-style BitnetForCausalLM (f32, 1 layer); `fixed` overrides some linears."""
    from safetensors.numpy import save_file
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    head_dim = hidden // heads
    vocab = 384
    cfg = {"architectures": ["BitnetForCausalLM"], "model_type": "llama", "hidden_size": hidden,
           "intermediate_size": inter, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
           "num_hidden_layers": 1, "vocab_size": vocab, "max_position_embeddings": 256,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu"}
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv_heads * head_dim, hidden),
              "self_attn.v_proj": (kv_heads * head_dim, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}
    t = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden), dtype=np.float32),
         "model.norm.weight": np.ones(hidden, np.float32)}
    p = "model.layers.0."
    for n in ("input_layernorm", "post_attention_layernorm", "self_attn.inner_attn_ln"):
        t[p + n + ".weight"] = np.ones(hidden, np.float32)
    t[p + "mlp.ffn_layernorm.weight"] = np.ones(inter, np.float32)
    for n, shp in shapes.items():
        w = fixed.get(n)
        if w is None:
            # ternary x 2^-5 keeps float32 sums exact, so numpy's absmean equals torch's bit for bit
            w = rng.integers(-1, 2, size=shp).astype(np.float32) * CODE_STEP
        assert w.shape == shp and w.dtype == np.float32, (n, w.shape, shp)
        t[p + n + ".weight"] = w
    save_file(t, str(dest / "model.safetensors"))
    _sentencepiece_model(dest)


def e2e_check(bitnet: Path, work: Path, mod, results: dict[str, bytes], inputs: dict) -> list[str]:
    """Run the real converter on tiny checkpoints holding the golden matrices; compare bytes."""
    msgs = []
    # (model tag, outtype, hidden, inter, heads, kv_heads, {proj: case}, kernel_config shapes)
    models = [
        ("tl2_h256", "tl2", 256, 768, 4, 2, {"self_attn.q_proj": "tl2_rem"},
         [(256, 256, 128, 96, 32), (128, 256, 64, 96, 32), (768, 256, 256, 96, 32), (256, 768, 128, 96, 32)]),
        ("tl2_h384", "tl2", 384, 256, 6, 2, {"self_attn.k_proj": "tl2_norem"},
         [(384, 384, 128, 192, 32), (128, 384, 64, 192, 32), (256, 384, 128, 192, 32), (384, 256, 128, 96, 32)]),
        ("tl1_h256", "tl1", 256, 768, 4, 2, {"self_attn.q_proj": "tl1_bm64", "self_attn.k_proj": "tl1_bm32"},
         [(256, 256, 128, 64, 64), (128, 256, 64, 128, 32), (768, 256, 256, 128, 32), (256, 768, 128, 64, 64)]),
    ]
    gguf_names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                  "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down"}
    env = dict(os.environ, PYTHONPATH=str(bitnet / "3rdparty" / "llama.cpp" / "gguf-py"))
    for tag, outtype, hidden, inter, heads, kvh, fixed_cases, shapes in models:
        mdir = work / tag / "model"      # directory name = general.name
        if mdir.exists():
            shutil.rmtree(mdir)
        fixed = {proj: inputs[c + "_codes"].astype(np.float32) * CODE_STEP for proj, c in fixed_cases.items()}
        write_onebit_checkpoint(mdir, hidden, inter, heads, kvh, fixed, seed=11)
        run_dir = work / tag
        (run_dir / "include").mkdir(exist_ok=True)
        (run_dir / "include" / "kernel_config.ini").write_text(kernel_config_text(shapes))
        out = run_dir / f"{tag}.gguf"
        cmd = [sys.executable, str(bitnet / "utils" / "convert-hf-to-gguf-bitnet.py"), str(mdir),
               "--outtype", outtype, "--outfile", str(out)]
        subprocess.run(cmd, cwd=run_dir, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        tensors = read_gguf_tensors(out)
        want_type = 38 if outtype == "tl1" else 39
        tiling = {(m, k): (BM, BK, bm) for m, k, BM, BK, bm in shapes}
        # every TL tensor of the model: converter bytes == direct upstream call on the same weights
        from safetensors.numpy import load_file
        st = load_file(str(mdir / "model.safetensors"))
        for proj, gname in gguf_names.items():
            ti = tensors[f"blk.0.{gname}.weight"]
            assert ti["type"] == want_type, (tag, gname, ti["type"])
            w = st[f"model.layers.0.{proj}.weight"]
            # ternary codes and scale as weight_quant: rint(W * inv) clipped, inv = 1/mean|W|, scale = 1/inv
            a = np.abs(w)
            inv = np.float32(1.0) / np.maximum(np.float32(a.sum(dtype=np.float32)) / np.float32(a.size), np.float32(1e-5))
            codes = np.clip(np.rint(w * inv), -1, 1).astype(np.int8)
            s = np.float32(np.float32(1.0) / inv)
            direct = tl_tensor_bytes(mod, outtype, codes, s, *tiling[w.shape])
            if ti["bytes"] != direct:
                raise SystemExit(f"e2e mismatch: {tag} {gname} (stride {ti['stride']} vs {len(direct)})")
            case = fixed_cases.get(proj)
            if case is not None:
                if ti["bytes"] != results[case]:
                    raise SystemExit(f"e2e mismatch with golden {case}")
                msgs.append(f"{case}: converter bytes of blk.0.{gname}.weight in {out.name} == golden")
        msgs.append(f"{tag}: all 7 {outtype} tensors == direct upstream calls; file_type={tensors['__kv__'].get('general.file_type')}")
    return msgs


# ----------------------------------------------------------------------------- I2_S via the build's ggml

def i2s_bytes(bitnet: Path, build: Path, work: Path, codes: np.ndarray, scale: np.float32) -> bytes:
    exe = work / "i2s_quant"
    if not exe.exists():
        ggml_lib = build / "3rdparty" / "llama.cpp" / "ggml" / "src"
        subprocess.run(["g++", "-O1", "-std=c++17", str(HERE / "i2s_quant.cpp"), "-o", str(exe),
                        "-I", str(bitnet / "3rdparty" / "llama.cpp" / "ggml" / "include"),
                        "-L", str(ggml_lib), "-lggml", f"-Wl,-rpath,{ggml_lib}"], check=True)
    M, K = codes.shape
    w = codes.astype(np.float32) * scale
    src = work / "i2s_in.f32"
    dst = work / "i2s_out.bin"
    w.tofile(src)
    subprocess.run([str(exe), str(src), str(M), str(K), str(dst)], check=True)
    out = dst.read_bytes()
    assert len(out) == M * K // 4 + 32
    return out


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bitnet", type=Path, required=True, help="microsoft/BitNet checkout (with 3rdparty/llama.cpp)")
    ap.add_argument("--build", type=Path, help="its cmake build dir (for the I2_S files); omit to skip them")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bitnet-cpp/golden-work"))
    ap.add_argument("--no-e2e", action="store_true", help="skip the real-converter cross-check")
    args = ap.parse_args()
    bitnet = args.bitnet.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    mod = load_upstream_converter(bitnet)

    inputs: dict[str, np.ndarray] = {}
    results: dict[str, bytes] = {}
    for name, (kind, M, K, BM, BK, bm, seed) in TL_CASES.items():
        codes = make_codes(M, K, seed)
        scale = absmean_scale(codes.astype(np.float32) * CODE_STEP)
        inputs[name + "_codes"] = codes
        inputs[name + "_scale"] = np.float32(scale)
        inputs[name + "_tiling"] = np.array([M, K, BM, BK, bm], dtype=np.int64)
        results[name] = tl_tensor_bytes(mod, kind, codes, scale, BM, BK, bm)
    if not args.no_e2e:
        for m in e2e_check(bitnet, args.work, mod, results, inputs):
            print(m)
    if args.build is not None:
        for name, (M, K, seed) in I2S_CASES.items():
            codes = make_codes(M, K, seed)
            scale = absmean_scale(codes.astype(np.float32) * CODE_STEP)
            inputs[name + "_codes"] = codes
            inputs[name + "_scale"] = np.float32(scale)
            results[name] = i2s_bytes(bitnet, args.build.resolve(), args.work, codes, scale)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, b in results.items():
        (args.out / f"{name}.bin").write_bytes(b)
        print(f"{name}.bin  {len(b)} bytes")
    np.savez_compressed(args.out / "inputs.npz", **inputs)


if __name__ == "__main__":
    main()
