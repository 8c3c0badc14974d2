"""Session-wide fixtures: tiny checkpoints are built once per test session and shared."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fixtures  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """checkpoint_factory(arch, dtype, shards, config_style, **kw) → a cached checkpoint directory."""
    cache: dict[tuple, Path] = {}

    def make(arch: str = "qwen2", dtype: str = "bf16", shards: int = 1, config_style: str = "hub", **kw: object) -> Path:
        key = (arch, dtype, shards, config_style, tuple(sorted(kw.items())))
        if key not in cache:
            name = "-".join([arch, dtype, f"s{shards}", config_style] + [f"{k}{v}" for k, v in sorted(kw.items())])
            cache[key] = fixtures.make_checkpoint(tmp_path_factory.mktemp("ckpt") / name, arch=arch, dtype=dtype,
                                                  shards=shards, config_style=config_style, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def qwen2_checkpoint(checkpoint_factory: Callable[..., Path]) -> Path:
    return checkpoint_factory("qwen2", "bf16", 1, "hub")


@pytest.fixture(scope="session")
def bitnet_packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny packed (bitlinear) BitNetForCausalLM checkpoint, shared by the validate tests (read only)."""
    import fixtures_bitnet

    return fixtures_bitnet.make_bitnet_checkpoint(tmp_path_factory.mktemp("bitnet-packed") / "bitnet", form="packed")


@pytest.fixture(scope="session")
def bitnet_cpp_golden(tmp_path_factory: pytest.TempPathFactory):
    """bitnet.cpp's own I2_S GGUF of a tiny BitNet checkpoint, rebuilt from tests/golden/bitnet_cpp_i2s.json,
    with the checkpoint and bitconv's i2_s GGUF of it (tests/bitnet_cpp_golden.py)."""
    import bitnet_cpp_golden

    return bitnet_cpp_golden.build(tmp_path_factory.mktemp("bitnet-cpp-golden"))
