"""Byte identity with llama.cpp's own converter (convert_hf_to_gguf.py from the llama-cpp-python
sdist, with its own gguf-py): same tensor names, order, types, shapes and bytes, same tokenizer
arrays and keys, same hyper-parameters."""
from __future__ import annotations

import pytest

import bitconv
import fixtures
from llamacpp_oracle import ReferenceUnavailable, compare_gguf, format_diffs, run_reference_converter

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("spec", fixtures.FIXTURE_MATRIX, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_identical_to_llamacpp_converter(spec, outtype, checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory(*spec)
    try:
        ref = run_reference_converter(ckpt, outtype, tmp_path / "ref.gguf")
    except ReferenceUnavailable as e:
        pytest.skip(str(e))
    ours = tmp_path / "ours.gguf"
    bitconv.convert(ckpt, "gguf", outtype, ours, manifest=False)
    diffs = compare_gguf(ours, ref)
    assert not diffs, format_diffs(diffs)
