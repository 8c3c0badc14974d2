"""Byte identity with llama.cpp's own converter (convert_hf_to_gguf.py from the llama-cpp-python
sdist, with its own gguf-py): same tensor names, order, types, shapes and bytes, same tokenizer
arrays and keys, same hyper-parameters."""
from __future__ import annotations

import pytest

import fixtures
from runtimes import assert_identical_to_llamacpp_converter

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("spec", fixtures.FIXTURE_MATRIX, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_identical_to_llamacpp_converter(spec, outtype, checkpoint_factory, tmp_path):
    assert_identical_to_llamacpp_converter(checkpoint_factory(*spec), outtype, tmp_path)
