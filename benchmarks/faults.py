#!/usr/bin/env python3
"""Fault-injection campaign (issue 8): many interrupted `bitconv` conversions, one table.

    sudo .venv/bin/python benchmarks/faults.py            # 50 injections per fault kind and format
    .venv/bin/python benchmarks/faults.py -n 10 --jobs gguf-f16 --faults SIGINT,SIGKILL

Builds two synthetic Qwen2 checkpoints (f32, hidden 512, 4 layers, ~670 MB: one file, and 3 shards),
makes a clean, validated reference run per format (GGUF f16 / q8_0, ONNX int8, safetensors
compressed-tensors int8; GGUF also loaded by llama-cpp-python when installed), then injects SIGINT
and SIGKILL at seeded random points, a full disk (tmpfs filled mid-write → ENOSPC, when this user may
mount; RLIMIT_FSIZE → EFBIG), a source shard deleted mid-run and a read-only output folder (GGUF),
and checks after each: nothing at the output path unless byte-identical to the reference, one line
on stderr, no traceback, no temp left after a clean error, the next run after a SIGKILL succeeds.
Root (mounts) gives the full campaign; the harness is tests/faults.py. Exit 1 if any run failed a check.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import faults  # noqa: E402

if __name__ == "__main__":
    sys.exit(faults.main())
