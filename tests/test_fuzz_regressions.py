"""Every input the fuzzers (and the audit behind issue 8) found crashing a parser, replayed through
its harness: a parser may refuse it only with a BitconvError.

tests/fuzz_regressions/<harness>/<what-it-breaks>: the harness's raw input (for most harnesses the
first byte picks which file of the checkpoint the rest is; see fuzz/fuzz_<harness>.py).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CASES = sorted((REPO / "tests" / "fuzz_regressions").glob("*/*"))


def _harness(name: str):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(f"fuzz.fuzz_{name}")


def test_every_harness_has_regressions() -> None:
    assert {p.parent.name for p in CASES} == {"gguf", "safetensors", "config_tokenizer", "batch"}


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
def test_crashing_input_is_refused_cleanly(case: Path) -> None:
    data = case.read_bytes()
    assert len(data) <= 16384, "keep regression inputs small"
    _harness(case.parent.name).TestOneInput(data)  # raises anything but BitconvError
