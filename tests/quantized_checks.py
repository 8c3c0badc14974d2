"""Shared checks for the quantized-source tests (tests/convert/test_*_sources.py, test_keep_grid.py):
variants of a packed checkpoint for the bad-input cases, the one-line refusals, and byte identity
with llama.cpp's converter."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def variant(src: Path, dst: Path, qc: dict[str, Any] | Callable[[dict[str, Any]], None] | None = None,
            edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """A copy of the quantized checkpoint `src` (files hard-linked) with its quantization_config
    changed — keys merged from a dict, or a function that edits it — and/or its tensors (torch,
    one model.safetensors) edited: the bad-input cases of every scheme."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "config.json" and not (edit and f.name == "model.safetensors"):
            (dst / f.name).hardlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    if callable(qc):
        qc(cfg["quantization_config"])
    elif qc is not None:
        cfg["quantization_config"] = {**cfg["quantization_config"], **qc}
    (dst / "config.json").write_text(json.dumps(cfg))
    if edit:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(src / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(dst / "model.safetensors"))
    return dst


def drop(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda t: t.pop(name)


def set_tensor(name: str, value: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    def edit(t: dict[str, Any]) -> None:
        t[name] = value(t[name]).contiguous()
    return edit


def g_idx_out_of_range(a: Any) -> Any:
    """A g_idx naming group 6 at column 5 (the fixtures' linears have at most 6 groups)."""
    a = a.clone()
    a[5] = 6
    return a


def assert_refused(src: Path, phrase: str, tmp_path: Path) -> None:
    """bitconv.convert of `src` raises a one-line CheckpointError naming `phrase`; nothing written."""
    import pytest

    import bitconv
    from bitconv.errors import CheckpointError

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(CheckpointError) as e:
        bitconv.convert(src, "gguf", "q8_0", out_dir / "m.gguf")
    assert phrase in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert list(out_dir.iterdir()) == []


def assert_refused_cli(src: Path, phrase: str, tmp_path: Path) -> None:
    """`bitconv hf2gguf` of `src`: exit 2, one line naming `phrase`, no traceback, nothing written —
    for refusals found while a linear is read, after the output file was started."""
    from cli_helpers import assert_nothing_written, error_line, run_cli

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.gguf"
    proc = run_cli("hf2gguf", str(src), "-q", "f16", "-o", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert phrase in error_line(proc), proc.stderr
    assert_nothing_written(out_dir, out)
    assert list(out_dir.iterdir()) == []


def llamacpp_references(packed: dict[str, tuple[Path, Any]], identity: list[tuple[str, str]], root: Path) -> dict:
    """llama.cpp's GGUFs of (fixture, outtype) pairs, all made by one converter process (skipped
    or failed as tests/llamacpp_oracle.skip_or_fail says when the converter is unavailable)."""
    from llamacpp_oracle import ReferenceUnavailable, run_reference_converter_batch, skip_or_fail

    jobs = [(packed[n][0], t, root / f"{n}-{t}.gguf") for n, t in identity]
    try:
        outs = run_reference_converter_batch(jobs, root / "convert.log")
    except ReferenceUnavailable as e:
        skip_or_fail(str(e))
    return dict(zip(identity, outs))


def assert_identical_to_reference(src: Path, outtype: str, reference: Path, tmp_path: Path) -> None:
    import bitconv
    from llamacpp_oracle import compare_gguf, format_diffs

    ours = tmp_path / "ours.gguf"
    bitconv.convert(src, "gguf", outtype, ours, manifest=False)
    diffs = compare_gguf(ours, reference)
    assert not diffs, format_diffs(diffs)


def record_slabs(monkeypatch: Any, slab_bytes: int) -> list[tuple[int, int, int]]:
    """Make the GGUF writer read `slab_bytes` at a time and record every (lo, hi, rows) a dequantized
    linear is asked for: the test then sees whether linears were read a slab of rows at a time."""
    from bitconv.convert import dequant
    from bitconv.formats import gguf_writer

    slabs: list[tuple[int, int, int]] = []
    rows = dequant._SlabReader.rows

    def spy(self: Any, lo: int, hi: int) -> Any:
        slabs.append((lo, hi, self.layout.shape[0]))
        return rows(self, lo, hi)

    monkeypatch.setattr(dequant._SlabReader, "rows", spy)
    monkeypatch.setattr(gguf_writer, "SLAB_BYTES", slab_bytes)
    return slabs
