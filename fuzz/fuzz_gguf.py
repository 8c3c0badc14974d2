"""GGUF reader behind `inspect` / `validate`: header, metadata KV and tensor table.

The first input byte picks the reading (bit 0: full arrays; bit 1: also `bitconv.inspect` and the
CLI's JSON view); the rest is the file.
"""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

from fuzz.common import instrumented, main, mode_prefixed, scratch

with instrumented(__name__ == "__main__"):
    import bitconv
    from bitconv.cli.inspect import _inspect_gguf
    from bitconv.errors import BitconvError
    from bitconv.convert.gguf_header import read_gguf_summary

NAME = "gguf"
MAX_LEN = 65536  # the seeds' headers and their (small) tensor data


GGUF_TOKENS = (b"GGUF", b"general.alignment", b"general.file_type", b"general.architecture",
               *(struct.pack("<I", t) for t in range(13)), struct.pack("<Q", 1 << 63), struct.pack("<Q", (1 << 64) - 1),
               struct.pack("<I", 39), struct.pack("<I", 36), struct.pack("<d", float("inf")))


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    path = scratch() / "model.gguf"
    path.write_bytes(body)
    try:
        s = read_gguf_summary(path, full_arrays=bool(mode & 1))
        s.n_params, s.data_nbytes
        if mode & 2:
            view, _ = _inspect_gguf(bitconv.inspect(path), bool(mode & 4))
            json.dumps(view)
    except BitconvError:
        pass


def seed_inputs(seeds: Path) -> list[bytes]:
    files = sorted((seeds / "gguf").glob("*.gguf"))
    return [mode_prefixed(m, f.read_bytes()) for f in files for m in (0, 3)]


if __name__ == "__main__":
    main(NAME, TestOneInput, seed_inputs, sys.argv[1:], max_len=MAX_LEN, dictionary=GGUF_TOKENS)
