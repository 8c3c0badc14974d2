"""`bitconv batch` job-file loader (`load_jobs`): the TOML is parsed and checked before anything runs."""
from __future__ import annotations

import sys
from pathlib import Path

from fuzz.common import REPO, instrumented, main, put, scratch

with instrumented(__name__ == "__main__"):
    from bitconv.batch import load_jobs
    from bitconv.errors import BitconvError

NAME = "batch"
SEEDS = (
    "[defaults]\nvalidate = true\n\n[[job]]\nname = \"a\"\nsource = \"./ckpt\"\nformat = \"gguf\"\nquant = \"q8_0\"\n"
    "output = \"out/a.gguf\"\n\n[[job]]\nsource = \"ckpt\"\ntarget = \"bitnet-x86\"\noutput = \"out/b.gguf\"\n"
    "kernel_config = \"k.ini\"\nthreads = 2\n",
    "[[job]]\nsource = 'owner/name'\nformat = 'onnx'\nquant = 'int4'\nblock_size = 32\noutput = 'out/onnx'\n"
    "revision = 'main'\n",
    "[[job]]\nsource = '/abs/ckpt'\nformat = 'compressed-tensors'\nquant = 'int8'\nmax_shard_size = '1GB'\n"
    "output = 'st'\n[[job]]\nsource = 'x'\nformat = 'bitnet-packed'\nlinear_class = 'autobitlinear'\noutput = 'bp'\n",
    "[[job]]\nsource = 'qwen'\noutput = 'a.gguf'\n[[job]]\nsource = 'qwen'\noutput = 'a.gguf'\n",
)


TOML_TOKENS = (b"[[job]]", b"[defaults]", b"[job]", b"source = ", b"output = ", b"format = ", b"target = ",
               b"quant = ", b"kernel_config = ", b"validate = true", b"name = ", b"threads = 2", b"'", b'"""', b"'''",
               b"[", b"]", b"{", b"}", b" = ", b"\n", b".", b"1979-05-27T07:32:00Z", b"inf", b"nan", b"0x7f",
               b"'gguf'", b"'onnx'", b"'bitnet-x86'", b"'compressed-tensors'", b"'bnb-nf4'", b"\\u0000", b"'..'")


def TestOneInput(data: bytes) -> None:
    folder = put(scratch() / "batch", {"jobs.toml": data})
    try:
        load_jobs(folder / "jobs.toml")
    except BitconvError:
        pass


def seed_inputs(_seeds: Path) -> list[bytes]:
    return [s.encode() for s in SEEDS] + [(REPO / "examples" / "ci" / "conversions.toml").read_bytes()]


if __name__ == "__main__":
    main(NAME, TestOneInput, seed_inputs, sys.argv[1:], max_len=4096, dictionary=TOML_TOKENS)
