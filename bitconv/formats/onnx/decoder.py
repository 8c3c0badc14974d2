"""ONNX decoder graphs for ONNX Runtime (CPU EP), written directly with `onnx.helper` (no torch).

Graph IO (the names onnxruntime-genai and optimum use): `input_ids` [batch, seq] int64,
`attention_mask` [batch, total_seq] int64, `position_ids` [batch, seq] int64,
`past_key_values.{i}.key/value` [batch, n_kv_heads, past_seq, head_dim] → `logits`
[batch, seq, vocab] float32, `present.{i}.key/value` [batch, n_kv_heads, total_seq, head_dim].
A prompt runs with past_seq = 0; each decode step feeds the previous step's presents back.

Numerics, following transformers' eager forward op for op:
- RMSNorm in float32 (x · 1/sqrt(mean(x²) + eps)), cast back to the compute dtype, times the weight;
- NeoX RoPE (rotate halves) from `position_ids` · inv_freq in float32;
- attention with standard ops (MatMul / Softmax), grouped query heads broadcast without copying
  K/V, a causal + padding mask built once from `attention_mask` (key j is visible to query i iff
  j ≤ past_seq + i and attention_mask[j] = 1); scores and softmax in float32;
- BitNet: attn_sub_norm before o_proj, ffn_sub_norm before down_proj, ReLU², and BitLinear's
  activation quantization (bitlinear.py);
- Qwen2-MoE / Qwen3-MoE sparse blocks with standard ops (moe.py).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .bitlinear import BitLinearBlocks
from .external_data import ExternalData
from .moe import MoeBlocks
from .plan import OnnxPlan

OPSET = 17
IR_VERSION = 10  # onnxruntime ≥ 1.18 reads IR 10
_F32_MIN = float(np.finfo(np.float32).min)


class DecoderBuilder(MoeBlocks, BitLinearBlocks):
    """Builds the decoder graph; weights are loaded, encoded and written as the graph asks for them."""

    def __init__(self, plan: OnnxPlan, data: ExternalData) -> None:
        super().__init__(plan, data)
        m = plan.mapping
        self.n_layers, self.hidden = m.n_layers, m.hidden
        self.n_head, self.n_kv, self.head_dim = m.n_head, m.n_head_kv, m.head_dim
        self.eps = float(m.config.get("rms_norm_eps", m.config.get("norm_eps", 1e-6)) or 1e-6)
        theta = m.rope_theta if m.rope_theta is not None else m.default_rope_theta
        self.rope_theta = float(theta)
        self.act = m.activation
        self.swa = m.sliding_layers

    # -- blocks --

    def mlp(self, x: str, gate: Callable[[str, str], str], up: Callable[[str, str], str],
            down: Callable[[str, str], str], hint: str, sub_norm: str | None = None) -> str:
        """down(act(gate(x)) · up(x)), act = SiLU or ReLU²; BitNet's ffn_sub_norm before down."""
        g = self.g
        gx, ux = gate(x, hint + "/gate_proj"), up(x, hint + "/up_proj")
        if self.act == "relu2":
            r = g.op("Relu", [gx], hint + "/act")
            a = g.op("Mul", [r, r], hint + "/act")
        elif self.act == "gelu_pytorch_tanh":  # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
            c = lambda v: g.const(np.array(v, dtype=self.np_ct))  # noqa: E731
            cube = g.op("Mul", [g.op("Mul", [gx, gx], hint + "/act"), gx], hint + "/act")
            inner = g.op("Mul", [g.op("Add", [gx, g.op("Mul", [cube, c(0.044715)], hint + "/act")], hint + "/act"),
                                 c(0.7978845608028654)], hint + "/act")
            t = g.op("Add", [g.op("Tanh", [inner], hint + "/act"), c(1.0)], hint + "/act")
            a = g.op("Mul", [g.op("Mul", [gx, c(0.5)], hint + "/act"), t], hint + "/act")
        else:
            a = g.op("Mul", [gx, g.op("Sigmoid", [gx], hint + "/act")], hint + "/act")
        y = g.op("Mul", [a, ux], hint + "/mlp")
        if sub_norm is not None:
            y = self.rms_norm(y, sub_norm, hint + "/ffn_sub_norm")
        return down(y, hint + "/down_proj")

    def rms_norm(self, x: str, weight: str, hint: str) -> str:
        from onnx import TensorProto

        g = self.g
        w = self._add_init(weight, self._load(weight).astype(self.np_ct))
        xf = g.op("Cast", [x], hint, to=TensorProto.FLOAT) if self.f16 else x
        ms = g.op("ReduceMean", [g.op("Mul", [xf, xf], hint)], hint, axes=[-1], keepdims=1)
        r = g.op("Div", [g.const(np.float32(1.0)), g.op("Sqrt", [g.op("Add", [ms, g.const(np.float32(self.eps))],
                                                                          hint)], hint)], hint)
        y = g.op("Mul", [xf, r], hint)
        if self.f16:
            y = g.op("Cast", [y], hint, to=TensorProto.FLOAT16)
        return g.op("Mul", [y, w], hint)

    def rope(self, x: str, cos: str, sin: str, hint: str) -> str:
        """NeoX rotation of x [B, H, S, D] with cos/sin [B, 1, S, D/2]."""
        g = self.g
        half = self.head_dim // 2
        a, b = g.op("Split", [x, g.const(np.array([half, half], np.int64))], hint, n_out=2, axis=-1)
        ra = g.op("Sub", [g.op("Mul", [a, cos], hint), g.op("Mul", [b, sin], hint)], hint)
        rb = g.op("Add", [g.op("Mul", [b, cos], hint), g.op("Mul", [a, sin], hint)], hint)
        return g.op("Concat", [ra, rb], hint, axis=-1)

    def embed(self, ids: str) -> str:
        """The token embedding lookup, in the compute dtype."""
        from onnx import TensorProto

        g = self.g
        emb = self.storage["token_embd.weight"]
        table = self._add_streamed("token_embd.weight", np.float32 if emb.storage == "f32" else np.float16)
        h = g.op("Gather", [table, ids], "embed", axis=0)
        if emb.storage != self.plan.quant.compute:
            h = g.op("Cast", [h], "embed", to=self.ct)
        if (scale := self.plan.mapping.embedding_scale) is not None:
            h = g.op("Mul", [h, g.const(np.array(scale, dtype=self.np_ct))], "embed")
        return h

    def rope_tables(self, pos: str, theta: float | None = None) -> tuple[str, str]:
        """cos / sin [B, 1, S, D/2] of float32 positions [B, S], in the compute dtype."""
        g = self.g
        i64 = lambda v: g.const(np.array(v, dtype=np.int64))  # noqa: E731
        d = self.head_dim
        inv_freq = (np.float32(1.0) / (np.float32(self.rope_theta if theta is None else theta) **
                                       (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(d))))
        pos = g.op("Unsqueeze", [pos, i64([-1])], "rope")
        freqs = g.op("Unsqueeze", [g.op("Mul", [pos, g.const(inv_freq.astype(np.float32))], "rope"), i64([1])], "rope")
        cos, sin = g.op("Cos", [freqs], "rope"), g.op("Sin", [freqs], "rope")
        if self.f16:
            cos, sin = g.op("Cast", [cos], "rope", to=self.ct), g.op("Cast", [sin], "rope", to=self.ct)
        return cos, sin

    def layers(self, h: str, cos: str, sin: str, allowed: str, *, cache: bool,
               local: tuple[str, str, str] | None = None) -> str:
        """The decoder blocks over h [B, S, hidden]; `allowed` [B, 1, 1, S, T] masks the scores. With
        `cache`, K/V are concatenated after past_key_values.{i} and exposed as present.{i}. `local`:
        the (cos, sin, allowed) of the sliding-window layers (mapping.sliding_layers)."""
        from onnx import TensorProto

        g = self.g
        i64 = lambda v: g.const(np.array(v, dtype=np.int64))  # noqa: E731
        d = self.head_dim
        ct = self.ct
        rep = self.n_head // self.n_kv
        scaling = np.float32(self.head_dim ** -0.5)
        src = self.plan.sources
        for i in range(self.n_layers):
            p, hint = f"blk.{i}.", f"layers.{i}"
            cos_i, sin_i, allowed_i = local if local and self.swa and (i + 1) % self.swa[0] else (cos, sin, allowed)
            x = self.rms_norm(h, p + "attn_norm.weight", hint + "/attn_norm")
            q = self.linear(x, p + "attn_q.weight", hint + "/q_proj")
            k = self.linear(x, p + "attn_k.weight", hint + "/k_proj")
            v = self.linear(x, p + "attn_v.weight", hint + "/v_proj")
            q = g.op("Reshape", [q, i64([0, 0, self.n_head, d])], hint + "/q")
            k = g.op("Reshape", [k, i64([0, 0, self.n_kv, d])], hint + "/k")
            v = g.op("Reshape", [v, i64([0, 0, self.n_kv, d])], hint + "/v")
            if p + "attn_q_norm.weight" in src:
                q = self.rms_norm(q, p + "attn_q_norm.weight", hint + "/q_norm")
                k = self.rms_norm(k, p + "attn_k_norm.weight", hint + "/k_norm")
            q = g.op("Transpose", [q], hint + "/q", perm=[0, 2, 1, 3])
            k = g.op("Transpose", [k], hint + "/k", perm=[0, 2, 1, 3])
            v = g.op("Transpose", [v], hint + "/v", perm=[0, 2, 1, 3])
            q = self.rope(q, cos_i, sin_i, hint + "/q_rope")
            k = self.rope(k, cos_i, sin_i, hint + "/k_rope")
            if cache:
                k_all = g.op("Concat", [f"past_key_values.{i}.key", k], hint + "/k", axis=2,
                             outputs=[f"present.{i}.key"])
                v_all = g.op("Concat", [f"past_key_values.{i}.value", v], hint + "/v", axis=2,
                             outputs=[f"present.{i}.value"])
            else:
                k_all, v_all = k, v
            # grouped heads: q [B, Hkv, rep, S, D] against k [B, Hkv, 1, D, T], broadcast, no K/V copies
            qg = g.op("Reshape", [q, i64([0, self.n_kv, rep, -1, d])], hint + "/attn")
            kt = g.op("Unsqueeze", [g.op("Transpose", [k_all], hint + "/attn", perm=[0, 1, 3, 2]), i64([2])],
                      hint + "/attn")
            if self.f16:  # scores and softmax in float32
                qg = g.op("Cast", [qg], hint + "/attn", to=TensorProto.FLOAT)
                kt = g.op("Cast", [kt], hint + "/attn", to=TensorProto.FLOAT)
            scores = g.op("Mul", [g.op("MatMul", [qg, kt], hint + "/attn"), g.const(scaling)], hint + "/attn")
            scores = g.op("Where", [allowed_i, scores, g.const(np.float32(_F32_MIN))], hint + "/attn")
            probs = g.op("Softmax", [scores], hint + "/attn", axis=-1)
            if self.f16:
                probs = g.op("Cast", [probs], hint + "/attn", to=ct)
            ctx = g.op("MatMul", [probs, g.op("Unsqueeze", [v_all, i64([2])], hint + "/attn")], hint + "/attn")
            ctx = g.op("Reshape", [ctx, i64([0, self.n_head, -1, d])], hint + "/attn")
            ctx = g.op("Transpose", [ctx], hint + "/attn", perm=[0, 2, 1, 3])
            ctx = g.op("Reshape", [ctx, i64([0, 0, self.n_head * d])], hint + "/attn")
            if p + "attn_sub_norm.weight" in src:
                ctx = self.rms_norm(ctx, p + "attn_sub_norm.weight", hint + "/attn_sub_norm")
            h = g.op("Add", [h, self.post_norm(self.linear(ctx, p + "attn_output.weight", hint + "/o_proj"),
                                               p + "post_attention_norm.weight", hint)], hint + "/residual")

            x = self.rms_norm(h, p + "ffn_norm.weight", hint + "/ffn_norm")
            if p + "ffn_gate_inp.weight" in src:
                y = self.moe(x, p, hint + "/moe")
            else:
                lin = lambda n: (lambda v, hh: self.linear(v, p + n, hh))  # noqa: E731
                sub = p + "ffn_sub_norm.weight"
                y = self.mlp(x, lin("ffn_gate.weight"), lin("ffn_up.weight"), lin("ffn_down.weight"), hint,
                             sub_norm=sub if sub in src else None)
            h = g.op("Add", [h, self.post_norm(y, p + "post_ffw_norm.weight", hint)], hint + "/residual")
        return h

    def post_norm(self, x: str, weight: str, hint: str) -> str:
        """Gemma3's norm of a block's output before the residual add, where the model has one."""
        return self.rms_norm(x, weight, hint + "/" + weight.split(".")[-2]) if weight in self.plan.sources else x

    def build(self) -> Any:
        from onnx import TensorProto, helper

        g, ct = self.g, self.ct
        i64 = lambda v: g.const(np.array(v, dtype=np.int64))  # noqa: E731
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                ["batch_size", "total_sequence_length"]),
                  helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                 ["batch_size", "sequence_length", self.plan.mapping.vocab_size])]
        kv_shape_in = ["batch_size", self.n_kv, "past_sequence_length", self.head_dim]
        kv_shape_out = ["batch_size", self.n_kv, "total_sequence_length", self.head_dim]
        for i in range(self.n_layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", ct, kv_shape_in))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", ct, kv_shape_out))

        h = self.embed("input_ids")
        pos = g.op("Cast", ["position_ids"], "rope", to=TensorProto.FLOAT)
        cos, sin = self.rope_tables(pos)

        # mask [B, 1, 1, S, T]: key j visible to query i iff j <= T - S + i and attention_mask[j]
        s_len = g.op("Squeeze", [g.op("Shape", ["input_ids"], "mask", start=1, end=2)], "mask")
        t_len = g.op("Squeeze", [g.op("Shape", ["attention_mask"], "mask", start=1, end=2)], "mask")
        one, zero = g.const(np.int64(1)), g.const(np.int64(0))
        k_idx = g.op("Range", [zero, t_len, one], "mask")
        q_idx = g.op("Range", [g.op("Sub", [t_len, s_len], "mask"), t_len, one], "mask")
        causal = g.op("LessOrEqual", [g.op("Unsqueeze", [k_idx, i64([0])], "mask"),
                                      g.op("Unsqueeze", [q_idx, i64([1])], "mask")], "mask")
        pad = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], "mask", to=TensorProto.BOOL), i64([1, 2, 3])], "mask")
        allowed = g.op("And", [causal, pad], "mask")
        h = self.layers(h, cos, sin, allowed, cache=True)

        x = self.rms_norm(h, "output_norm.weight", "final_norm")
        if self.f16:
            logits = g.op("Cast", [self.matmul(x, "output.weight", "lm_head")], "lm_head", to=TensorProto.FLOAT,
                          outputs=["logits"])
        else:
            logits = self.matmul(x, "output.weight", "lm_head", output="logits")
        assert logits == "logits"
        return self.model("bitconv_decoder", inputs, outputs)

    def model(self, name: str, inputs: list[Any], outputs: list[Any]) -> Any:
        """The ONNX model of the graph built so far."""
        from onnx import helper

        from ..._version import __version__

        graph = helper.make_graph(self.g.nodes, name, inputs, outputs, initializer=self.g.initializers)
        model = helper.make_model(graph, producer_name="bitconv", ir_version=IR_VERSION,
                                  opset_imports=[helper.make_opsetid("", OPSET),
                                                 helper.make_opsetid("com.microsoft", 1)])
        model.producer_version = __version__
        return model
