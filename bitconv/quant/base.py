"""The quantizer contract: a per-tensor hook (`prepare`) plus block math (`quantize`/`dequantize`).

Quantizers do numeric work only; they never touch files. A float32 (or float16, as llama.cpp keeps
f16 sources) `[rows, K]` array goes in, bytes in the target layout come out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import numpy as np


@dataclass
class QuantizedTensor:
    """Encoded tensor: `data` in the artifact's layout, optional separate `scales` and a `trailer`
    (per-tensor data that follows the blocks, as i2_s's scale does)."""

    data: np.ndarray
    scales: np.ndarray | None = None
    trailer: bytes = b""

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes) + (0 if self.scales is None else int(self.scales.nbytes)) + len(self.trailer)


@dataclass(frozen=True)
class QuantInfo:
    """What `bitconv quants` prints about a type."""

    name: str
    bits_per_weight: float
    runtimes: tuple[str, ...]
    description: str = ""
    formats: tuple[str, ...] = ("gguf",)


class Quantizer:
    """Base of every quant type. Subclasses set the class attributes and the three methods."""

    name: ClassVar[str] = ""
    block_size: ClassVar[int] = 1
    ggml_type: ClassVar[int | None] = None  # gguf.GGMLQuantizationType value, or None if not a GGUF type
    onnx_bits: ClassVar[int | None] = None
    bits_per_weight: ClassVar[float] = 32.0
    runtimes: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    #: the quant type token_embd/output take in a file of this type (None: the same type)
    embedding_type: ClassVar[str | None] = None
    #: gguf.LlamaFileType value written as general.file_type for a file of this type
    file_type: ClassVar[int | None] = None
    #: rows are independent: the writer may quantize row chunks in parallel with identical bytes
    row_parallel: ClassVar[bool] = True
    #: a ternary type: only ternary-trained linears take it (see the plan)
    ternary: ClassVar[bool] = False
    #: a llama-quantize file type (gguf.LlamaFileType): the file follows llama-quantize's per-tensor
    #: type rules and tensor order for it (bitconv/quant/mixes.py); None: llama.cpp's converter's rules
    llama_ftype: ClassVar[int | None] = None
    #: with llama_ftype: every quantizable tensor takes this type (llama-quantize --pure), no mix
    pure: ClassVar[bool] = False

    def prepare(self, chunks: Iterable[np.ndarray], stored_dtype: str | None = None,
                known_scale: Any = None) -> Any:
        """Per-tensor statistic computed before the blocks (a scale), from the tensor given as row
        chunks in compute dtype (`stored_dtype`: how the checkpoint stores it; `known_scale`: a
        scale the checkpoint already fixes, as packed ternary weights do); None for block-local
        types. Called once per tensor."""
        return None

    @property
    def needs_prepare(self) -> bool:
        return type(self).prepare is not Quantizer.prepare

    def trailer(self, state: Any) -> bytes:
        """Per-tensor bytes after the blocks (i2_s: the scale and its padding)."""
        return b""

    def assemble(self, out: np.ndarray, state: Any) -> np.ndarray:
        """The whole tensor's `quantize` output, [rows, …], → its bytes before the trailer. Identity
        for row-local layouts; layouts that interleave rows across tiles (tl1/tl2) regroup here."""
        return out

    def quantize(self, w: np.ndarray, state: Any = None) -> QuantizedTensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def quantize_stored(self, raw: np.ndarray, stored_dtype: str, state: Any = None) -> QuantizedTensor | None:
        """`quantize` of the values a checkpoint stores as `raw` (`stored_dtype`; bf16 as raw bits), where
        a kernel reads them in one pass with no float32 copy; the same bytes. None where there is no
        such path (the default), and for chunks it leaves to the checked numpy path (NaN / Inf):
        the caller then widens the chunk, checks it and calls `quantize`."""
        return None

    def dequantize(self, q: QuantizedTensor, shape: tuple[int, ...]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def can_quantize(self, shape: tuple[int, ...]) -> bool:
        return len(shape) >= 1 and shape[-1] % self.block_size == 0

    def shape_error(self, shape: tuple[int, ...]) -> str | None:
        """Why this type cannot store a tensor of `shape` (None when it can), for error messages."""
        if self.can_quantize(shape):
            return None
        return f"{self.name} needs the input dimension to be a multiple of {self.block_size}"

    def encoded_nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of the encoded tensor, known before any data is read (for the plan and disk check)."""
        raise NotImplementedError

    @classmethod
    def info(cls) -> QuantInfo:
        return QuantInfo(cls.name, cls.bits_per_weight, cls.runtimes, cls.description)


__all__ = ["QuantizedTensor", "QuantInfo", "Quantizer", "field"]
