"""ONNX sentence-embedding graphs (BitNet embedding models) for plain onnxruntime.

IO: `input_ids`, `attention_mask` [batch, seq] int64 → `last_hidden_state` [batch, seq, hidden] and
`sentence_embedding` [batch, hidden], float32. The blocks are the decoder's (decoder.py: BitLinear
per-projection norms and int8 activations, MatMulNBits int2/int4/int8 linears), without a KV cache;
then the final norm, the pooling of the checkpoint's `1_Pooling/config.json` (last token, mean or
first token, over the tokens the mask keeps) and L2 normalization when modules.json lists it.

Positions count the kept tokens (cumsum(mask) − 1), so a sentence embeds the same alone, right- or
left-padded in a batch; keys are visible to a query at or before it and where the mask is 1.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .decoder import DecoderBuilder

#: gguf PoolingType values the graph implements (mean, CLS, last)
POOLINGS = (1, 2, 3)


class EmbeddingBuilder(DecoderBuilder):
    def build(self) -> Any:
        from onnx import TensorProto, helper

        g, m = self.g, self.plan.mapping
        i64 = lambda v: g.const(np.array(v, dtype=np.int64))  # noqa: E731
        inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"])
                  for n in ("input_ids", "attention_mask")]
        outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                                 ["batch_size", "sequence_length", self.hidden]),
                   helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch_size", self.hidden])]
        h = self.embed("input_ids")
        mask = g.op("Cast", ["attention_mask"], "mask", to=TensorProto.FLOAT)
        kept = g.op("CumSum", [mask, i64(1)], "rope")
        kept_pos = g.op("Relu", [g.op("Sub", [kept, g.const(np.float32(1.0))], "rope")], "rope")
        cos, sin = self.rope_tables(kept_pos)
        # mask [B, 1, 1, S, S]: key j visible to query i iff j <= i and attention_mask[j]
        s_len = g.op("Squeeze", [g.op("Shape", ["input_ids"], "mask", start=1, end=2)], "mask")
        idx = g.op("Range", [g.const(np.int64(0)), s_len, g.const(np.int64(1))], "mask")
        causal = g.op("LessOrEqual", [g.op("Unsqueeze", [idx, i64([0])], "mask"),
                                      g.op("Unsqueeze", [idx, i64([1])], "mask")], "mask")
        pad = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], "mask", to=TensorProto.BOOL), i64([1, 2, 3])], "mask")
        allowed = g.op("And", [causal, pad], "mask")
        local = None
        if (swa := m.sliding_layers) is not None:  # key j visible to query i only within the window
            _, window, theta = swa
            near = g.op("Less", [g.op("Sub", [g.op("Unsqueeze", [idx, i64([1])], "mask"),
                                              g.op("Unsqueeze", [idx, i64([0])], "mask")], "mask"),
                                 g.const(np.int64(window))], "mask")
            local = (*self.rope_tables(kept_pos, theta), g.op("And", [allowed, near], "mask"))
        h = self.layers(h, cos, sin, allowed, cache=False, local=local)
        x = self.rms_norm(h, "output_norm.weight", "final_norm")
        x = g.op("Cast", [x], "final_norm", to=TensorProto.FLOAT, outputs=["last_hidden_state"])
        pooled = self.pool(x, mask, idx, int(m.pooling))
        if m.normalize:
            norm = g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [pooled, pooled], "l2"), i64([-1])], "l2",
                                      keepdims=1)], "l2")
            g.op("Div", [pooled, g.op("Max", [norm, g.const(np.float32(1e-12))], "l2")], "l2",
                 outputs=["sentence_embedding"])
        else:
            g.op("Identity", [pooled], "pool", outputs=["sentence_embedding"])
        return self.model("bitconv_embedding", inputs, outputs)

    def pool(self, x: str, mask: str, idx: str, pooling: int) -> str:
        """[B, hidden] from x [B, S, hidden]: the last / first kept token, or the mean of the kept ones."""
        g = self.g
        i64 = lambda v: g.const(np.array(v, dtype=np.int64))  # noqa: E731
        if pooling == 1:
            total = g.op("ReduceSum", [g.op("Mul", [x, g.op("Unsqueeze", [mask, i64([-1])], "pool")], "pool"),
                                       i64([1])], "pool", keepdims=0)
            count = g.op("ReduceSum", [mask, i64([1])], "pool", keepdims=1)
            return g.op("Div", [total, g.op("Max", [count, g.const(np.float32(1.0))], "pool")], "pool")
        if pooling == 3:  # the last position the mask keeps: argmax of mask · (index + 1)
            rank = g.op("Mul", [mask, g.op("Add", [g.op("Cast", [idx], "pool", to=1), g.const(np.float32(1.0))],
                                           "pool")], "pool")
            where = g.op("ArgMax", [rank], "pool", axis=1, keepdims=1)
        else:  # CLS: the first kept position
            where = g.op("ArgMax", [mask], "pool", axis=1, keepdims=1)
        return g.op("GatherND", [x, where], "pool", batch_dims=1)
