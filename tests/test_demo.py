"""`make demo` (examples/demo.py) runs the three headline flows and says what it made and where."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_demo_runs_the_headline_flows(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--out", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("\nPASS: ") == 3, out[-3000:]
    assert "BitLinear reference" in out and "Writing model shards" not in out + proc.stderr
    if "--runtime llama.cpp" in out:  # llama-cpp-python installed: llama.cpp judged the tq2_0 file
        assert "llama.cpp: tokenizer gives the reference's" in out
    for name in ("bitnet-b1.58-tiny-i2_s.gguf", "bitnet-1bitllm-tiny-tq2_0.gguf", "qwen2-tiny-q8_0.gguf"):
        assert (tmp_path / "demo" / name).is_file() and str(tmp_path / "demo" / name) in out
