"""gguf-py's GGUFWriter with what a large conversion needs: long arrays (a 150k-token vocabulary and
its merges) packed in bulk, and a tensor's data written a piece at a time."""
from __future__ import annotations

import struct
import sys
from typing import Any

import gguf
import numpy as np


class FastGGUFWriter(gguf.GGUFWriter):
    """gguf-py's writer with a vectorized packer for long arrays (a Qwen vocabulary is 300k
    strings; the per-value path costs about a second). Same bytes, little-endian only."""

    _ARRAY_DTYPES = {gguf.GGUFValueType.INT32: "<i4", gguf.GGUFValueType.UINT32: "<u4",
                     gguf.GGUFValueType.FLOAT32: "<f4", gguf.GGUFValueType.INT64: "<i8",
                     gguf.GGUFValueType.UINT64: "<u8"}

    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool,
                  sub_type: gguf.GGUFValueType | None = None) -> bytes:
        if (vtype != gguf.GGUFValueType.ARRAY or self.endianess != gguf.GGUFEndian.LITTLE
                or not isinstance(val, (list, tuple)) or len(val) < 64):
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        ltype = sub_type if sub_type is not None else gguf.GGUFValueType.get_type(val[0])
        head = (struct.pack("<I", vtype) if add_vtype else b"") + struct.pack("<IQ", ltype, len(val))
        kinds = set(map(type, val))  # (type checks and encoding in bulk: a vocabulary is 150k strings)
        if ltype == gguf.GGUFValueType.STRING and kinds == {str}:
            return head + _pack_strings(list(map(str.encode, val)))
        if ltype in self._ARRAY_DTYPES and kinds <= {int, float}:
            return head + np.asarray(val, dtype=self._ARRAY_DTYPES[ltype]).tobytes()
        return super()._pack_val(val, vtype, add_vtype, sub_type)

    # gguf-py writes a tensor's data in one call; these write it in pieces (a slab at a time)
    def begin_tensor_data(self, nbytes: int) -> None:
        if self.state is not gguf.WriterState.TI_DATA and self.state is not gguf.WriterState.WEIGHTS:
            raise ValueError(f"Expected output file to contain tensor info or weights, got {self.state}")
        assert self.fout is not None and len(self.fout) == 1
        ti = self.tensors[0].pop(next(iter(self.tensors[0])))
        assert ti.nbytes == nbytes
        self.write_padding(self.fout[0], self.fout[0].tell())
        self.state = gguf.WriterState.WEIGHTS

    def write_tensor_chunk(self, data: np.ndarray) -> None:
        # file.write, not ndarray.tofile: tofile loses the errno of a failed write (disk full)
        assert self.fout is not None and sys.byteorder == "little"
        self.fout[0].write(memoryview(np.ascontiguousarray(data)).cast("B"))

    def end_tensor_data(self, nbytes: int) -> None:
        assert self.fout is not None
        self.write_padding(self.fout[0], nbytes)


def _pack_strings(encoded: list[bytes]) -> bytes:
    """GGUF strings back to back (u64 length, then the bytes), in one scatter: the length bytes go
    to each record's start, the concatenated strings fill every other position in order."""
    lengths = np.fromiter(map(len, encoded), dtype="<u8", count=len(encoded))
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    starts = np.arange(len(encoded), dtype=np.int64) * 8
    starts[1:] += np.cumsum(lengths[:-1], dtype=np.int64)
    out = np.empty(8 * len(encoded) + blob.size, dtype=np.uint8)
    at_length = np.zeros(out.size, dtype=bool)
    where = (starts[:, None] + np.arange(8)).reshape(-1)
    out[where] = lengths.view(np.uint8)
    at_length[where] = True
    out[~at_length] = blob
    return out.tobytes()
