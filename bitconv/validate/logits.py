"""The forward/logits comparison every artifact format shares.

The numpy reference forward (bitconv.forward) runs the artifact's weights and the checkpoint's side
by side (hidden-state cos per layer); the artifact's logits are compared with one reference, chosen
by `reference_logits`: transformers float32 when it can run the checkpoint, else the numpy forward
of the HF weights. Reference results are cached per checkpoint and prompt, so validating several
artifacts of one checkpoint runs the reference once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BitconvError, UsageError
from ..forward import Hparams, ReferenceForward, WeightSource
from ..quiet import quiet_dependencies
from .checks import cos
from .sources import CheckpointWeights
from .report import DEFAULT_PROMPT, LogitsCheck, ValidationReport

def tokenize(reference: Path, prompt: str) -> list[int]:
    """The prompt's token ids with the checkpoint's own tokenizer (tokenizers / sentencepiece / tiktoken)."""
    from ..convert.tiktoken_vocab import find_tiktoken_file, tiktoken_encode

    tj, sp, tk = reference / "tokenizer.json", reference / "tokenizer.model", find_tiktoken_file(reference)
    try:
        if tj.is_file():
            from tokenizers import Tokenizer

            ids = Tokenizer.from_file(str(tj)).encode(prompt, add_special_tokens=False).ids
        elif sp.is_file():
            import sentencepiece

            ids = sentencepiece.SentencePieceProcessor(model_file=str(sp)).encode(prompt)
        elif tk is not None:
            ids = tiktoken_encode(tk, prompt)
        else:
            raise UsageError(f"{reference} has no tokenizer.json, tokenizer.model or qwen.tiktoken; pass --tokens")
    except ImportError as e:
        raise UsageError(f"tokenizing the prompt needs the `{e.name}` package; pass --tokens instead") from None
    if not ids:
        raise UsageError("the prompt tokenizes to nothing; pass a longer --prompt or --tokens")
    return list(ids)


class _RecentResults:
    """The last few reference results (transformers logits, reference forwards) by checkpoint and
    prompt: validating several artifacts of one checkpoint runs the reference once."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self.items: dict[tuple[Any, ...], Any] = {}

    @staticmethod
    def key(reference: Path, *parts: Any) -> tuple[Any, ...]:
        stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(reference.iterdir())
                      if p.is_file())
        return (str(reference.resolve()), stamp) + parts

    def get_or_make(self, key: tuple[Any, ...], make: Any) -> Any:
        if key not in self.items:
            self.items[key] = make()
            while len(self.items) > self.size:
                self.items.pop(next(iter(self.items)))
        return self.items[key]


_RECENT = _RecentResults()


#: architectures trained ternary (the ternary issue's definition, with quant_method "bitnet")
TERNARY_TRAINED = ("BitNetForCausalLM", "BitnetForCausalLM")
NUMPY_REFERENCE = "numpy forward of the HF weights"
NUMPY_BITLINEAR_REFERENCE = NUMPY_REFERENCE + " (BitLinear reference: ternary weights, int8 activations)"


def ternary_trained(config: dict[str, Any]) -> bool:
    arch = (config.get("architectures") or [""])[0]
    qc = config.get("quantization_config")
    return arch in TERNARY_TRAINED or (isinstance(qc, dict) and qc.get("quant_method") == "bitnet")


@dataclass
class TransformersRun:
    logits: np.ndarray  # [positions, vocab] float32
    label: str  # what ran, for the report
    ternary: bool  # the ternary model (BitLinear), not the full-precision one


def _dequantized_reference(config: dict[str, Any]) -> bool:
    """A quantized checkpoint bitconv dequantizes (GPTQ, AWQ, FP8, …): its dequantized weights are the
    reference. transformers would run it through the scheme's own kernels instead (FP8 quantizes the
    activations too; GPTQ needs its packages), which is not what a conversion of those weights
    computes."""
    from ..convert.quantization_config import source_scheme

    try:
        return source_scheme(config) is not None
    except BitconvError:
        return True


def transformers_logits(reference: Path, tokens: list[int]) -> TransformersRun | None:
    """All-position float32 logits from transformers (eager attention, float32) and what ran, or None
    when it is not installed or has no class for this checkpoint. A ternary-trained checkpoint runs
    as the ternary model it is: packed ones through their own BitLinear, master weights through
    transformers' BitNet quantization in its online mode (AutoBitLinear: absmean ternary weights,
    per-token int8 activations, the BitLinear reference) — never as the full-precision model."""
    return _RECENT.get_or_make(_RECENT.key(reference, "transformers", tuple(tokens)),
                               lambda: _transformers_logits(reference, tokens))


def _transformers_logits(reference: Path, tokens: list[int]) -> TransformersRun | None:
    import json

    try:
        with quiet_dependencies():  # importing them may warn too
            import torch
            import transformers
    except ImportError:
        return None
    cfg = json.loads((reference / "config.json").read_text())
    arch = (cfg.get("architectures") or [""])[0]
    if not hasattr(transformers, arch) or _dequantized_reference(cfg):
        return None
    kwargs: dict[str, Any] = {}
    label = "transformers float32"
    ternary = ternary_trained(cfg)
    if ternary:
        qc = cfg.get("quantization_config")
        if isinstance(qc, dict) and qc.get("quant_method") == "bitnet":
            lc, mode = qc.get("linear_class", "bitlinear"), qc.get("quantization_mode", "offline")
            label += f" (BitLinear reference: BitNet {lc}, {mode}: ternary weights, int8 activations)"
        else:  # master weights without a quantization_config: transformers would run them in full precision
            if not hasattr(transformers, "BitNetQuantConfig"):
                return None
            config = transformers.AutoConfig.from_pretrained(str(reference))
            config.quantization_config = transformers.BitNetQuantConfig(
                linear_class="autobitlinear", quantization_mode="online").to_dict()
            kwargs["config"] = config
            label += (" (BitLinear reference: BitNet online quantization of the master weights, AutoBitLinear: "
                      "ternary weights, int8 activations)")
    import torch._dynamo

    prev = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    try:
        with quiet_dependencies():
            model = transformers.AutoModelForCausalLM.from_pretrained(str(reference), dtype=torch.float32,
                                                                      attn_implementation="eager", **kwargs)
            # offline AutoBitLinear keeps its stored weights' dtype (bf16 ternary values: exact in float32);
            # transformers refuses .float() on a quantized model, torch's own cast does it
            torch.nn.Module.float(model).eval()
            with torch.no_grad():
                out = model(torch.tensor([tokens], dtype=torch.long)).logits[0]
        return TransformersRun(out.to(torch.float32).numpy(), label, ternary)
    except Exception:  # noqa: BLE001 - BitNet quantization needs accelerate, a class may refuse this
        return None    # checkpoint: the numpy reference judges instead, and the report names it
    finally:
        torch._dynamo.config.disable = prev


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over positions of KL(P || Q), P the reference."""
    p = p_logits.astype(np.float64)
    q = q_logits.astype(np.float64)
    lp = p - p.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = q - q.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


# --- entry point ----------------------------------------------------------------------------------


def prompt_ids(reference: Path, prompt: str | None, tokens: list[int] | None) -> list[int]:
    """`tokens` as given, else the prompt (default: DEFAULT_PROMPT) through the checkpoint's tokenizer."""
    text = prompt or DEFAULT_PROMPT
    return tokens or _RECENT.get_or_make(_RECENT.key(reference, "tokens", text), lambda: tokenize(reference, text))


def reference_forward(reference: Path, plan: Any, ids: list[int], ternary: bool) -> Any:
    """The numpy forward of the checkpoint's weights (`plan`: its tensor plan), cached."""
    hp_ref = reference_hparams(plan, ternary)
    return _RECENT.get_or_make(_RECENT.key(reference, "forward", tuple(ids), ternary),
                               lambda: ReferenceForward(hp_ref, CheckpointWeights(plan)).run(ids))


def reference_logits(reference: Path, ids: list[int], shape: tuple[int, ...], use_transformers: bool, ternary: bool,
                     fallback: Callable[[], np.ndarray | None]) -> tuple[np.ndarray | None, str]:
    """The logits an artifact is judged against and a label saying exactly what produced them:
    transformers float32 when it runs the checkpoint as the model the artifact holds (a `ternary`
    artifact: only as the ternary model), else `fallback()` — the numpy forward of the HF weights,
    BitLinear for a ternary model (1bitLLM-style checkpoints have no transformers class); None when
    that cannot run either."""
    if use_transformers:
        run = transformers_logits(reference, ids)
        if run is not None and run.logits.shape == shape and run.ternary == ternary:
            return run.logits, run.label
    return fallback(), NUMPY_BITLINEAR_REFERENCE if ternary else NUMPY_REFERENCE


def logits_check(got: np.ndarray, target: np.ndarray, source: str, n_tokens: int, need: float) -> LogitsCheck:
    c = cos(got, target)
    top1 = float(np.mean(got.argmax(-1) == target.argmax(-1)))
    return LogitsCheck(source, n_tokens, c, kl(target, got), top1, need, c >= need)


def compare_forward(report: ValidationReport, art: WeightSource, hp_art: Hparams, plan: Any,
                    reference: Path, ternary: bool, prompt: str | None, tokens: list[int] | None,
                    use_transformers: bool, thresholds: dict[str, float]) -> None:
    """The reference forward on the artifact's weights and on the checkpoint's (`plan`): hidden-state
    cos per layer, and the artifact's logits against `reference_logits`, held to
    thresholds[report.quant]. Shared by every artifact format that decodes to weights in GGUF naming."""
    ids = prompt_ids(reference, prompt, tokens)
    ref_out = reference_forward(reference, plan, ids, ternary)
    art_out = ReferenceForward(hp_art, art).run(ids)
    report.layers = [{"layer": i, "cos": cos(a, b)} for i, (a, b) in enumerate(zip(art_out.hidden, ref_out.hidden))]
    target, source = reference_logits(reference, ids, art_out.logits.shape, use_transformers, ternary,
                                      lambda: ref_out.logits)
    report.logits = logits_check(art_out.logits, target, source, len(ids), thresholds.get(report.quant, 0.0))


def reference_hparams(plan: Any, ternary: bool) -> Hparams:
    """The hyper-parameters of the reference run, from config.json (not from the artifact's
    metadata, so a wrong or missing key in the artifact shows up in its logits)."""
    m = plan.mapping
    c = m.config
    return Hparams(arch=m.arch_name, n_layers=m.n_layers, n_embd=m.hidden, n_head=m.n_head, n_head_kv=m.n_head_kv,
                   head_dim=m.head_dim, eps=float(c.get("rms_norm_eps") or 1e-6),
                   rope_base=float(m.rope_theta or m.default_rope_theta), rope_dim=m.head_dim,
                   n_expert_used=int(c.get("num_experts_per_tok") or 0), ternary=ternary,
                   pooling=m.pooling if m.embedding_model else None,
                   sliding_window=m.sliding_layers[1] if m.sliding_layers else None)
