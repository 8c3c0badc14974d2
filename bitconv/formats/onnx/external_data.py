"""The external data file: every checkpoint tensor appended to `model.onnx.data` as it is encoded
(aligned, streamed a row chunk at a time), and the initializers that point into it."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from ...errors import OutputError

if TYPE_CHECKING:  # onnx is optional: imported where used
    from onnx import TensorProto

_ALIGN_SMALL, _ALIGN_LARGE, _LARGE = 64, 4096, 1 << 16


class ExternalData:
    """Appends tensors to one external data file; returns initializers that point into it."""

    def __init__(self, path: Path, location: str, progress: Callable[[str, int], None] | None = None) -> None:
        self.path = path
        self.location = location
        self.f = open(path, "wb")
        self.offset = 0
        self.progress = progress

    def add(self, name: str, array: np.ndarray, label: str | None = None) -> "TensorProto":
        a = np.asarray(array)
        return self.add_rows(name, a.shape, a.dtype, [a], label)

    def add_rows(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: Iterable[np.ndarray],
                 label: str | None = None) -> "TensorProto":
        """A tensor written as consecutive row chunks (whole tensor = their concatenation), so a
        large one is never assembled in memory."""
        from onnx import TensorProto, helper

        dt = np.dtype(dtype).newbyteorder("<")
        nbytes = math.prod(shape) * dt.itemsize
        align = _ALIGN_LARGE if nbytes >= _LARGE else _ALIGN_SMALL
        pad = -self.offset % align
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        written = 0
        for chunk in chunks:
            a = np.ascontiguousarray(chunk, dtype=dt)
            self.f.write(memoryview(a).cast("B"))
            written += a.nbytes
        if written != nbytes:
            raise OutputError(f"{name}: wrote {written} bytes for shape {tuple(shape)}, expected {nbytes}")
        t = TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        t.dims.extend(shape)
        for key, value in (("location", self.location), ("offset", str(self.offset)), ("length", str(nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        t.data_location = TensorProto.EXTERNAL
        self.offset += nbytes
        if self.progress:
            self.progress(label or name, nbytes)
        return t

    def close(self) -> None:
        if not self.f.closed:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
