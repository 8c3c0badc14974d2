"""llama-quantize's file types (the k-quant mixes and the legacy types) in one pass from safetensors.

The judge is llama.cpp's own quantizer: `llama_model_quantize` (exported by llama-cpp-python)
applied to bitconv's f32 GGUF of the same checkpoint must give the very same file, byte for byte:
tensor types, order, shapes, data and metadata."""
from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import pytest

import bitconv
from bitconv.quant.mixes import (LlamaQuantizeRules, ModelFacts, allows_quantization, fallback_type,
                                 ggml_n_dims, llama_order_key)
from bitconv.quant.registry import get_quantizer

T = gguf.GGMLQuantizationType
TOKENS = [9707, 1879, 11, 419, 374, 264, 1273, 315, 279, 15099, 13, 220, 16, 17, 18, 151644, 872, 198]


def llama_quantize(src: Path, dst: Path, quant: str) -> None:
    """llama.cpp's llama_model_quantize(src → dst) with the file type bitconv writes for `quant`."""
    llama_cpp = pytest.importorskip("llama_cpp")
    q = get_quantizer(quant)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = q.llama_ftype
    params.pure = q.pure
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed for {quant}"


def describe_difference(ours: Path, ref: Path) -> str:
    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(ref)
    if list(a.fields) != list(b.fields):
        return f"metadata keys differ: {list(a.fields)[-4:]} vs {list(b.fields)[-4:]}"
    ta, tb = a.tensors, b.tensors
    if [t.name for t in ta] != [t.name for t in tb]:
        return f"tensor order differs: {[t.name for t in ta][:6]} vs {[t.name for t in tb][:6]}"
    for x, y in zip(ta, tb):
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            return f"{x.name}: {x.tensor_type.name}{list(x.shape)} vs llama.cpp {y.tensor_type.name}{list(y.shape)}"
        if bytes(x.data) != bytes(y.data):
            return f"{x.name}: data differs ({x.tensor_type.name})"
    return "metadata values differ"


@pytest.fixture(scope="module")
def models(checkpoint_factory, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name → (checkpoint, bitconv's f32 GGUF of it)."""
    import fixtures_onebit

    root = tmp_path_factory.mktemp("mixes")
    ckpts = {
        # hidden and intermediate multiples of 256: the k-quant paths; 5 layers so that
        # use_more_bits picks some (2 and 4) and not others
        "qwen2-k": checkpoint_factory("qwen2", "bf16", 1, "hub", hidden=256, layers=5, intermediate_size=512),
        # tied embedding: token_embd takes output's rule. One layer: a random model's logits are more
        # sensitive to weight noise than a trained one's, and q4_k_m's cos ≥ 0.99 holds for one layer
        # (0.9904; 0.981 with two)
        "qwen3-tied": checkpoint_factory("qwen3", "bf16", 1, "hub", hidden=256, layers=1, tie_word_embeddings=True),
        # hidden 64: every fallback (q2_k/q3_k → q4_0, q4_k → q5_0, q5_k → q5_1, q6_k → q8_0); MoE
        # layer parsing; a [1, hidden] router llama-quantize writes as 1-D
        "qwen2moe-fallback": checkpoint_factory("qwen2moe", "bf16", 1, "hub", layers=3),
        # BitNet b1.58 (1bitLLM style): the ternary linears quantized from their s·W_t image
        "bitnet": fixtures_onebit.make_onebit_checkpoint(root / "onebit", hidden=256, layers=2),
    }
    out = {}
    for name, ckpt in ckpts.items():
        f32 = root / f"{name}-f32.gguf"
        bitconv.convert(ckpt, "gguf", "f32", f32, manifest=False)
        out[name] = (ckpt, f32)
    return out


CASES = [("qwen2-k", "q4_k_m"), ("qwen3-tied", "q4_k_m"), ("qwen3-tied", "q5_k_m"), ("qwen3-tied", "q6_k"),
         ("qwen2moe-fallback", "q2_k"), ("qwen2moe-fallback", "q3_k_m"), ("qwen2moe-fallback", "q5_k_s"),
         ("bitnet", "q4_0")]


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(model, quant) → bitconv's file, converted once for the tests below."""
    root = tmp_path_factory.mktemp("mix-out")
    cache: dict[tuple[str, str], Path] = {}

    class Lazy(dict):
        def __missing__(self, key: tuple[str, str]) -> Path:
            out = root / f"{key[0]}-{key[1]}.gguf"
            bitconv.convert(models[key[0]][0], "gguf", key[1], out, manifest=False)
            self[key] = out
            return out

    return Lazy(cache)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "quant"), CASES, ids=lambda v: str(v))
def test_identical_to_llama_quantize(models, converted, model: str, quant: str, tmp_path: Path) -> None:
    ours, ref = converted[model, quant], tmp_path / "ref.gguf"
    llama_quantize(models[model][1], ref, quant)
    same = ours.read_bytes() == ref.read_bytes()
    assert same, f"{model} {quant}: " + describe_difference(ours, ref)
    # (bitconv's header reader: gguf-py's turns the 151k-token vocabulary into Python objects, ~10 s)
    types = {T(t.type_id) for t in bitconv.inspect(ours).tensors}
    if model == "qwen2moe-fallback":  # the fallbacks really ran
        assert types & {T.Q4_0, T.Q5_0, T.Q5_1, T.Q8_0}, types
    if quant == "q4_k_m" and model == "qwen2-k":
        assert {T.Q4_K, T.Q6_K} <= types, types


@pytest.mark.slow
def test_q4_k_m_logits_in_llama_cpp(models, converted) -> None:
    pytest.importorskip("llama_cpp")
    import fixtures
    from runtimes import cos, llama_last_logits

    out = converted["qwen3-tied", "q4_k_m"]
    c = cos(llama_last_logits(out, TOKENS), fixtures.hf_logits(models["qwen3-tied"][0], TOKENS))
    assert c >= 0.99, f"q4_k_m: cos {c:.6f} < 0.99"


# --- the rules on their own (no data) -----------------------------------------------------------

def _qwen_names(layers: int, tied: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    h, ff = 1024, 2816
    t = [("token_embd.weight", (32000, h)), ("output_norm.weight", (h,))] + ([] if tied else [("output.weight", (32000, h))])
    for i in range(layers):
        for n, s in (("attn_q.weight", (h, h)), ("attn_k.weight", (256, h)), ("attn_v.weight", (256, h)),
                     ("attn_output.weight", (h, h)), ("ffn_gate.weight", (ff, h)), ("ffn_up.weight", (ff, h)),
                     ("ffn_down.weight", (h, ff)), ("attn_norm.weight", (h,)), ("attn_q.bias", (h,))):
            t.append((f"blk.{i}.{n}", s))
    return sorted(t, key=lambda x: llama_order_key(x[0]))


def test_q4_k_m_layer_pattern() -> None:
    """attn_v / ffn_down at q6_k in the first and last eighth and every third layer between."""
    tensors = _qwen_names(16)
    types = dict(zip([n for n, _ in tensors],
                     LlamaQuantizeRules(15, ModelFacts("qwen2", 16, 16, 4)).types(tensors)))
    more = [i for i in range(16) if types[f"blk.{i}.ffn_down.weight"] == T.Q6_K]
    assert more == [0, 1, 4, 7, 10, 13, 14, 15]
    assert [i for i in range(16) if types[f"blk.{i}.attn_v.weight"] == T.Q6_K] == more
    assert types["output.weight"] == T.Q6_K and types["token_embd.weight"] == T.Q4_K
    assert types["blk.3.attn_q.weight"] == T.Q4_K and types["blk.3.attn_norm.weight"] is None
    assert types["blk.0.attn_q.bias"] is None
    tied = _qwen_names(2, tied=True)
    t2 = dict(zip([n for n, _ in tied], LlamaQuantizeRules(15, ModelFacts("qwen2", 2, 16, 4)).types(tied)))
    assert t2["token_embd.weight"] == T.Q6_K


def test_llama_order_and_dims() -> None:
    names = ["blk.10.ffn_up.weight", "blk.2.attn_v.weight", "token_embd.weight", "blk.2.attn_k.weight", "output.weight"]
    assert sorted(names, key=llama_order_key) == [
        "output.weight", "token_embd.weight", "blk.2.attn_k.weight", "blk.2.attn_v.weight", "blk.10.ffn_up.weight"]
    assert ggml_n_dims((1, 64)) == 1 and ggml_n_dims((4, 1, 64)) == 3 and ggml_n_dims((64,)) == 1
    assert not allows_quantization("blk.0.ffn_gate_inp.weight", (8, 64))
    assert not allows_quantization("blk.0.ffn_gate_inp_shexp.weight", (1, 64))
    assert allows_quantization("blk.0.ffn_down_exps.weight", (8, 64, 128))


@pytest.mark.parametrize(("qtype", "ncols", "want"), [
    (T.Q4_K, 512, T.Q4_K), (T.Q4_K, 64, T.Q5_0), (T.Q5_K, 64, T.Q5_1), (T.Q6_K, 64, T.Q8_0),
    (T.Q2_K, 96, T.Q4_0), (T.Q3_K, 96, T.Q4_0), (T.Q4_K, 48, T.F16), (T.Q4_0, 48, T.F16)])
def test_fallback_table(qtype, ncols: int, want) -> None:
    assert fallback_type(qtype, ncols) == want


def test_mix_dry_run_lists_types(qwen2_checkpoint, tmp_path: Path) -> None:
    res = bitconv.convert(qwen2_checkpoint, "gguf", "q4_k_m", tmp_path / "x.gguf", dry_run=True).to_dict()
    assert not (tmp_path / "x.gguf").exists()
    by_name = {t["name"]: t for t in res["tensors"]}
    # hidden 64 is no multiple of 256: every matrix falls back, output to q8_0
    assert by_name["output.weight"]["type"] == "q8_0"
    assert by_name["blk.0.attn_q.weight"]["type"] == "q5_0"
    assert by_name["blk.0.attn_norm.weight"]["type"] == "f32"
    assert list(by_name)[:2] == ["output.weight", "output_norm.weight"]  # llama.cpp's order
