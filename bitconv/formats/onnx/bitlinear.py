"""BitNet (BitNetForCausalLM): BitLinear's per-token int8 activation quantization before each
ternary linear as explicit ops (x_scale = 127 / max(max|x|, 1e-5); clip(round(x · x_scale), −128,
127) / x_scale), in every export: f32/f16 exports then compute exactly the BitLinear reference
(DESIGN.md), and the int2 export runs the same function, with MatMulNBits' own int8 blocks
(accuracy_level 4) on top. BitNet embedding models put an RMSNorm of its own before each BitLinear
(`<name>_norm_in.weight`). (The ternary weights themselves are encoded in weights.py; attn_sub_norm
and ffn_sub_norm are placed by decoder.py.)
"""
from __future__ import annotations

from .external_data import ExternalData
from .plan import OnnxPlan
from .weights import WeightWriter


class BitLinearBlocks(WeightWriter):
    """Linears as the model computes them: BitLinear's activation quantization first where it applies."""

    def __init__(self, plan: OnnxPlan, data: ExternalData) -> None:
        super().__init__(plan, data)
        self._fake_quant_cache: dict[str, str] = {}

    def fake_quant(self, x: str, hint: str) -> str:
        """BitLinear's per-token int8 activation quantization (quantize → dequantize), once per input."""
        if x in self._fake_quant_cache:
            return self._fake_quant_cache[x]
        g, c = self.g, self.np_ct
        amax = g.op("ReduceMax", [g.op("Abs", [x], hint)], hint, axes=[-1], keepdims=1)
        xs = g.op("Div", [g.const(c(127.0)), g.op("Max", [amax, g.const(c(1e-5))], hint)], hint)
        q = g.op("Clip", [g.op("Round", [g.op("Mul", [x, xs], hint)], hint), g.const(c(-128.0)), g.const(c(127.0))],
                 hint)
        y = g.op("Div", [q, xs], hint)
        self._fake_quant_cache[x] = y
        return y

    def linear(self, x: str, name: str, hint: str, output: str | None = None) -> str:
        norm_in = name[: -len(".weight")] + "_norm_in.weight"
        if norm_in in self.plan.sources:  # BitNet embedding models: each BitLinear's own RMSNorm first
            x = self.rms_norm(x, norm_in, hint + "/norm_in")  # type: ignore[attr-defined]
        if self.plan.bitlinear and self.plan.mapping.is_ternary_linear(name):
            x = self.fake_quant(x, hint + "/act_quant")
        return self.matmul(x, name, hint, output=output)
