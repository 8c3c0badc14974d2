"""Transformers' packed BitNet checkpoints (`quantization_config.quant_method: "bitnet"`): each
ternary linear is uint8 codes packed along its rows plus a one-value `weight_scale`. Shared by
every architecture that can come in that form (BitNet, llama-architecture ternary models)."""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np

from ...errors import CheckpointError
from ...quant.ternary import TernaryScale, dequantize_codes, hf_weight_scale_to_scale, unpack_hf_packed
from ..checkpoint import Checkpoint, LazyTensor
from .base import ArchMapping, SourceTensor


class PackedTernaryMixin(ArchMapping):
    """Decodes packed linears with the scale the checkpoint fixes; master weights pass through."""

    @property
    def linear_class(self) -> str | None:
        """The packed checkpoint's weight_scale convention, or None when it is not packed BitNet."""
        qc = self.config.get("quantization_config") or {}
        if not isinstance(qc, dict) or qc.get("quant_method") != "bitnet":
            return None
        return str(qc.get("linear_class") or "bitlinear")

    def tensors(self, checkpoint: Checkpoint) -> Iterator[SourceTensor]:
        scales = {n for n in checkpoint.tensors if n.endswith(".weight_scale")}
        for lt in checkpoint:
            if lt.name in scales or lt.name.endswith(self.skip_suffixes):
                continue
            if lt.dtype == "U8":
                yield self.packed_linear(lt, checkpoint)
            else:
                yield from self.map_tensor(lt)

    def packed_linear(self, packed: LazyTensor, checkpoint: Checkpoint) -> SourceTensor:
        name = self.gguf_name(packed.name)
        base = re.sub(r"^blk\.\d+\.", "", name)
        linear_class = self.linear_class
        if base not in self.TERNARY_LINEARS or linear_class is None:
            raise CheckpointError(f"{packed.name}: uint8 weights, but config.json has no bitnet "
                                  "quantization_config for a packed ternary linear")
        scale_name = packed.name.removesuffix(".weight") + ".weight_scale"
        scale_t = checkpoint.tensors.get(scale_name)
        if scale_t is None:
            raise CheckpointError(f"{packed.name}: packed ternary weights without {scale_name}")
        rows, k = self.expected_shapes()[base]
        if len(packed.shape) != 2 or packed.shape != (-(-rows // 4), k):
            raise CheckpointError(f"{packed.name}: packed shape {packed.shape} does not match config.json "
                                  f"(expects {(-(-rows // 4), k)} for a {rows}×{k} ternary matrix)")

        def scale() -> TernaryScale:
            values = scale_t.load().reshape(-1)
            if values.size != 1:
                raise CheckpointError(f"{scale_name}: expected one value, found {values.size}")
            return hf_weight_scale_to_scale(float(values[0]), linear_class)

        def codes() -> np.ndarray:
            return self.reorder_rows(name, unpack_hf_packed(packed.load_raw(), rows))

        def decode() -> np.ndarray:
            return dequantize_codes(codes(), scale())

        return SourceTensor(name, (rows, k), [packed, scale_t], hf_names=[packed.name], decode=decode,
                            known_scale=scale, codes=codes)

    def reorder_rows(self, gguf_name: str, w: np.ndarray) -> np.ndarray:
        """Row order the runtime expects (llama's q/k permutation); identity by default."""
        return w


