"""Qwen2-MoE / Qwen3-MoE sparse blocks with standard ops: router MatMul + Softmax in float32, TopK
(renormalized iff config `norm_topk_prob`), the top-k weights scattered into a dense [tokens,
experts] matrix; each expert runs its SwiGLU only on the tokens routed to it (NonZero → Gather →
MatMul/MatMulNBits → × weight → ScatterND add into a float32 sum), so a decode step costs k
experts, not all; Qwen2-MoE adds its shared expert times sigmoid(x · ffn_gate_inp_shexp).
Layers without a router (mlp_only_layers, decoder_sparse_step) are dense MLPs (decoder.py).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ...errors import CheckpointError
from ...quant import nbits
from .grid import expert_source, repack
from .plan import _BITS
from .weights import SLAB_BYTES, WeightWriter


class MoeBlocks(WeightWriter):
    """The sparse MoE block of DecoderBuilder (which provides `hidden`, `mlp` and `linear`)."""

    hidden: int

    def experts(self, name: str) -> list[Callable[[str, str], str]]:
        """One matmul builder per expert of the stacked [E, N, K] tensor `name`: every expert's
        initializer is written now (in expert order), the nodes later. Float experts are loaded
        stacked, once; experts of a GPTQ / AWQ source keep their grids (grid.py), one at a time."""
        t = self.storage[name]
        stem = name[: -len(".weight")]
        n_exp = int(t.shape[0])
        grids: list[tuple[nbits.NBitsTensor | None, np.ndarray | None]] = [(None, None)] * n_exp
        if t.repack is not None:
            grids = [self._expert_grid(name, e) for e in range(n_exp)]
        w3 = self._load(name) if any(q is None for q, _ in grids) else None
        ops: list[Callable[[str, str], str]] = []
        for e, (q, perm) in enumerate(grids):
            wname = f"{stem}.{e}.weight"
            if t.storage in ("f32", "f16"):
                assert w3 is not None
                dt = np.float32 if t.storage == "f32" else np.float16
                init = self._add_init(wname + ".T", np.ascontiguousarray(self._rounded(w3[e]).T).astype(dt, copy=False),
                                      wname)
                ops.append(lambda x, hint, init=init: self.g.op("MatMul", [x, init], hint))
                continue
            if q is None:
                assert w3 is not None
                q = nbits.quantize_rows(w3[e], _BITS[t.storage], self.plan.block_size or 32)
            ins = [self._add_init(f"{wname}.q{q.bits}", q.packed, wname),
                   self._add_init(f"{wname}.scales", q.scales.astype(np.float32))]
            if q.zero_points is not None:
                ins.append(self._add_init(f"{wname}.zero_points", q.zero_points))
            attrs = dict(K=q.k, N=q.n, bits=q.bits, block_size=q.block_size,
                         accuracy_level=self.plan.accuracy_level)  # not q: its arrays are written
            ops.append(lambda x, hint, ins=ins, attrs=attrs, perm=perm, wname=wname: self.g.op(
                "MatMulNBits", [x if perm is None else self._reordered(x, wname, perm, hint), *ins], hint,
                domain="com.microsoft", **attrs))
        del w3
        return ops

    def _expert_grid(self, name: str, e: int) -> tuple[nbits.NBitsTensor | None, np.ndarray | None]:
        """Expert e of a stacked GPTQ / AWQ tensor on its own grid, or (None, None) with a note."""
        t = self.storage[name]
        assert t.repack is not None
        q, perm, why = repack(expert_source(self.plan.sources[name], e), t.repack, SLAB_BYTES)
        if q is None:
            self.plan.notes.append(f"{name} expert {e}: re-quantized from the dequantized weights ({why})")
        return q, perm

    def router_matmul(self, x32: str, name: str, hint: str) -> str:
        """float32 x @ W^T for a router matrix (kept float32 whatever the export's type)."""
        w = self._add_init(name + ".T", np.ascontiguousarray(self._load(name).T))
        return self.g.op("MatMul", [x32, w], hint)

    def moe(self, x: str, p: str, hint: str) -> str:
        """Qwen2/Qwen3-MoE sparse block as transformers computes it: router softmax in float32,
        top-k (renormalized iff config.norm_topk_prob), each expert's SwiGLU on the tokens routed
        to it (NonZero → Gather → … → ScatterND add, so a decode step runs k experts, not all),
        weighted by its routing weight; Qwen2-MoE adds the shared expert times sigmoid(x · w_g)."""
        from onnx import TensorProto, helper

        g, c = self.g, self.plan.mapping.config
        i64 = lambda v: g.const(np.array(v, dtype=np.int64))  # noqa: E731
        top_k = int(c.get("num_experts_per_tok", 0) or 0)
        n_exp = int(self.plan.sources[p + "ffn_gate_inp.weight"].shape[0])
        if not 0 < top_k <= n_exp:
            raise CheckpointError(f"num_experts_per_tok={top_k} for {n_exp} experts")
        xf = g.op("Reshape", [x, i64([-1, self.hidden])], hint)  # [N, H]
        x32 = g.op("Cast", [xf], hint + "/router", to=TensorProto.FLOAT) if self.f16 else xf
        probs = g.op("Softmax", [self.router_matmul(x32, p + "ffn_gate_inp.weight", hint + "/router")],
                     hint + "/router", axis=-1)
        top_w, top_i = g.op("TopK", [probs, i64([top_k])], hint + "/router", n_out=2, axis=-1, largest=1, sorted=1)
        if c.get("norm_topk_prob", False):
            top_w = g.op("Div", [top_w, g.op("ReduceSum", [top_w, i64([-1])], hint + "/router", keepdims=1)],
                         hint + "/router")
        zeros32 = g.op("ConstantOfShape", [g.op("Shape", [probs], hint + "/router")], hint + "/router",
                       value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
        weights = g.op("ScatterElements", [zeros32, top_i, top_w], hint + "/router", axis=-1)  # [N, E]
        if self.f16:
            weights = g.op("Cast", [weights], hint + "/router", to=self.ct)
        # the experts' sum accumulates in float32 (onnxruntime's ScatterND adds no float16)
        out = g.op("ConstantOfShape", [g.op("Shape", [xf], hint)], hint,
                   value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
        gates, ups, downs = (self.experts(p + f"ffn_{n}_exps.weight") for n in ("gate", "up", "down"))
        for e in range(n_exp):
            eh = f"{hint}/experts.{e}"
            we = g.op("Gather", [weights, g.const(np.int64(e))], eh, axis=1)  # [N]
            rows = g.op("NonZero", [g.op("Greater", [we, g.const(self.np_ct(0))], eh)], eh)  # [1, M]
            idx = g.op("Squeeze", [rows, i64([0])], eh)  # [M]
            y = self.mlp(g.op("Gather", [xf, idx], eh, axis=0), gates[e], ups[e], downs[e], eh)
            y = g.op("Mul", [y, g.op("Unsqueeze", [g.op("Gather", [we, idx], eh, axis=0), i64([-1])], eh)], eh)
            if self.f16:
                y = g.op("Cast", [y], eh, to=TensorProto.FLOAT)
            out = g.op("ScatterND", [out, g.op("Transpose", [rows], eh, perm=[1, 0]), y], eh, reduction="add")
        if self.f16:
            out = g.op("Cast", [out], hint, to=self.ct)
        if p + "ffn_up_shexp.weight" in self.plan.sources:
            lin = lambda n: (lambda v, h: self.linear(v, p + n, h))  # noqa: E731
            shared = self.mlp(xf, lin("ffn_gate_shexp.weight"), lin("ffn_up_shexp.weight"),
                              lin("ffn_down_shexp.weight"), hint + "/shared_expert")
            if p + "ffn_gate_inp_shexp.weight" in self.plan.sources:
                sg = g.op("Sigmoid", [self.router_matmul(x32, p + "ffn_gate_inp_shexp.weight",
                                                         hint + "/shared_expert_gate")], hint + "/shared_expert_gate")
                if self.f16:
                    sg = g.op("Cast", [sg], hint + "/shared_expert_gate", to=self.ct)
                shared = g.op("Mul", [sg, shared], hint + "/shared_expert")
            out = g.op("Add", [out, shared], hint)
        return g.op("Reshape", [out, g.op("Shape", [x], hint)], hint)
