"""CI smoke of `make fuzz`: every harness runs a few thousand coverage-guided inputs (atheris,
libFuzzer's 2 s timeout and 512 MiB RSS limit) from the fixture seeds, and none may crash."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNS = 3000

pytest.importorskip("atheris")


def test_every_harness_runs_thousands_of_inputs_without_a_crash() -> None:
    proc = subprocess.run([sys.executable, "-m", "fuzz.run_all", "--runs", str(RUNS), "--no-keep", "--jobs", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    rows = re.finditer(r"^(\w+)\s+(\d+)\s+\d+\s+\d+\s+(\d+)\s", proc.stdout, re.M)
    table = {m[1]: (int(m[2]), int(m[3])) for m in rows}
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert set(table) == {"safetensors", "gguf", "config_tokenizer", "batch"}, proc.stdout
    for harness, (inputs, crashes) in table.items():
        assert inputs >= RUNS and crashes == 0, f"{harness}: {inputs} inputs, {crashes} crashes\n{proc.stdout}"
