"""Split GGUF output (`--split-max-size` / `--split-max-tensors`): the same files as llama.cpp's
converter writes for the same options, loaded by llama.cpp as the model the single file is, each
split's tensor data the single file's bytes; every split writable on its own; a set written or
refused as a whole (nothing left on failure); bad split sets refused in one line."""
from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

import bitconv
from bitconv.api import plan_gguf
from bitconv.convert.gguf_source import GGUFSource
from bitconv.convert.tokenizer import export_vocab
from bitconv.errors import CheckpointError, Interrupted, UsageError
from bitconv.formats import atomic, gguf_split, gguf_writer
from cli_helpers import assert_no_temps, error_line, json_result, run_cli
from llamacpp_oracle import read_gguf

SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
#: (convert_hf_to_gguf.py options, the same for bitconv.convert); 50K cuts a file 80 bytes short of
#: the limit and starts the set with a metadata-only file
CASES = {
    "max-tensors": (("--split-max-tensors", "5"), {"split_max_tensors": 5}),
    "max-size": (("--split-max-size", "50K", "--no-tensor-first-split"),
                 {"split_max_size": "50K", "no_tensor_first_split": True}),
}


def gguf_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.gguf"))


@pytest.fixture(scope="module")
def single(qwen2_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unsplit f16 file (byte-identical to the converter's: tests/test_byte_identity.py)."""
    out = tmp_path_factory.mktemp("single") / "model.gguf"
    bitconv.convert(qwen2_checkpoint, "gguf", "f16", out, manifest=False)
    return out


@pytest.fixture(scope="module")
def ours(qwen2_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    """bitconv's split sets (with their manifests), one folder per case."""
    sets = {}
    for case, (_, kw) in CASES.items():
        folder = tmp_path_factory.mktemp(f"ours-{case}")
        sets[case] = (bitconv.convert(qwen2_checkpoint, "gguf", "f16", folder / "model.gguf", **kw), folder)
    return sets


@pytest.fixture(scope="module")
def reference(qwen2_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """llama.cpp's converter's split sets, one folder per case (its run ends without a file at
    --outfile, which run_reference_converter requires, so it runs here)."""
    from llamacpp_oracle import ReferenceUnavailable, reference_converter_command, skip_or_fail

    sets = {}
    for case, (args, _) in CASES.items():
        folder = tmp_path_factory.mktemp(f"ref-{case}")
        try:
            cmd, env = reference_converter_command(qwen2_checkpoint, "f16", folder / "model.gguf", args)
        except ReferenceUnavailable as e:
            skip_or_fail(str(e))
        proc = subprocess.run(cmd, env=env, cwd=folder, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        sets[case] = folder
    return sets


# --- the plan: gguf-py's rule, llama.cpp's sizes and names ------------------------------------------

def test_plan_matches_gguf_py() -> None:
    """Same boundaries as gguf-py's GGUFWriter (what convert_hf_to_gguf.py splits with) for
    random tensor sizes and limits, with and without a metadata-only first file."""
    rng = random.Random(0)
    for _ in range(300):
        sizes = [rng.choice([32, 256, 4096, 50_000, 1 << 20]) * rng.randint(1, 3) for _ in range(rng.randint(1, 40))]
        max_size = rng.choice([0, 0, 1000, 60_000, 200_000, 3 << 20])
        max_tensors = rng.choice([0, 0, 1, 3, 7])
        first = rng.random() < 0.3
        w = gguf.GGUFWriter(None, "llama", split_max_tensors=max_tensors, split_max_size=max_size,
                            small_first_shard=first)
        for i, n in enumerate(sizes):
            w.add_tensor_info(f"t{i}", (n,), np.dtype(np.uint8), n, raw_dtype=gguf.GGMLQuantizationType.I8)
        splits = gguf_split.plan_splits(sizes, max_size=max_size, max_tensors=max_tensors, no_tensor_first_split=first)
        assert [len(r) for r in splits.ranges] == [len(t) for t in w.tensors], (sizes, max_size, max_tensors, first)


@pytest.mark.parametrize("text, expected", [
    ("45G", 45 * 10**9), ("500M", 500 * 10**6), ("7K", 7000), ("123", 123), ("0", 0),  # as the converter reads them
    ("2GB", 2 * 10**9), ("1.5G", 1_500_000_000), ("1GiB", 2**30), ("64kib", 64 * 1024), (" 3 T ", 3 * 10**12),
])
def test_parse_split_size(text: str, expected: int) -> None:
    assert gguf_split.parse_split_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "12X", "-5G", "1.2.3M", "5iB", "45 G B", "1e9"])
def test_parse_split_size_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="--split-max-size"):
        gguf_split.parse_split_size(text)


def test_split_names() -> None:
    assert gguf_split.split_names(Path("out/m.gguf"), 3) == [Path(f"out/m-0000{i}-of-00003.gguf") for i in (1, 2, 3)]
    assert gguf_split.split_names(Path("out/m.gguf"), 1) == [Path("out/m.gguf")]
    with pytest.raises(UsageError, match="at most 65535"):
        gguf_split.plan_splits([1] * 70_000, max_tensors=1)
    with pytest.raises(UsageError, match="cover the tensors"):
        gguf_split.SplitPlan((range(0, 2), range(3, 4)))


# --- the bytes ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_identical_to_converter_split(case: str, ours: dict[str, tuple[Any, Path]], reference: dict[str, Path]) -> None:
    """Same file names, same bytes, file by file, as convert_hf_to_gguf.py with the same options."""
    result, folder = ours[case]
    ref = reference[case]
    assert gguf_files(folder) == gguf_files(ref) and len(gguf_files(ref)) > 2
    for name in gguf_files(ref):
        assert (folder / name).read_bytes() == (ref / name).read_bytes(), f"{case}: {name} differs"
    n = len(gguf_files(ref))
    assert result.output == str(folder / f"model-00001-of-{n:05d}.gguf")
    assert [Path(o["path"]).name for o in result.outputs] == gguf_files(ref)


@pytest.mark.parametrize("case", list(CASES))
def test_split_layout(case: str, ours: dict[str, tuple[Any, Path]], single: Path) -> None:
    """Each file's tensors are the single file's, bytes and all, in order; the first file holds the
    single file's metadata then split.no (u16), split.count (u16), split.tensors.count (i32), the
    others only those three; the tensor data sections are the single file's, cut at the splits."""
    result, folder = ours[case]
    one = read_gguf(single)
    files = [read_gguf(folder / Path(o["path"]).name) for o in result.outputs]
    names = [t.name for f in files for t in f.tensors]
    assert names == [t.name for t in one.tensors]
    by_name = {t.name: t for t in one.tensors}
    data = one.path.read_bytes()
    for i, f in enumerate(files):
        keys = list(f.kv)
        expected_kv = list(one.kv) + list(SPLIT_KEYS) if i == 0 else list(SPLIT_KEYS)
        assert keys == expected_kv
        assert [f.kv[k].type_name() for k in SPLIT_KEYS] == ["UINT16", "UINT16", "INT32"]
        assert [f.kv[k].value() for k in SPLIT_KEYS] == [i, len(files), len(names)]
        if i == 0:
            assert all(f.kv[k].same(one.kv[k]) for k in one.kv)
        for t in f.tensors:
            ref = by_name[t.name]
            assert (t.shape, t.ggml_type) == (ref.shape, ref.ggml_type)
            assert np.array_equal(f.tensor_bytes(t), one.tensor_bytes(ref)), t.name
        if f.tensors:  # split by split: the data section is the single file's run of those tensors
            lo = one.data_offset + by_name[f.tensors[0].name].offset
            last = by_name[f.tensors[-1].name]
            hi = one.data_offset + last.offset + -(-last.n_bytes // one.alignment) * one.alignment
            assert f.path.read_bytes()[f.data_offset:] == data[lo:hi]
        else:  # a metadata-only file ends at its (padded) tensor table
            assert f.file_size == f.data_offset


def test_manifest_for_the_set(ours: dict[str, tuple[Any, Path]]) -> None:
    result, folder = ours["max-tensors"]
    manifest = json.loads((folder / "model.gguf.manifest.json").read_text())
    assert result.manifest == str(folder / "model.gguf.manifest.json")
    assert [r["path"] for r in manifest["outputs"]] == gguf_files(folder)
    for rec, out in zip(manifest["outputs"], result.outputs):
        assert (folder / rec["path"]).stat().st_size == rec["bytes"] == out["bytes"]
        assert rec["sha256"] == out["sha256"]
    assert manifest["options"]["split_max_tensors"] == 5
    assert not (folder / "model.gguf").exists()


def test_one_split_is_the_unsplit_file(qwen2_checkpoint: Path, single: Path, tmp_path: Path) -> None:
    """Limits the model fits in: one file under the output name, no split keys (as gguf-py does)."""
    result = bitconv.convert(qwen2_checkpoint, "gguf", "f16", tmp_path / "model.gguf", split_max_size="100G",
                             split_max_tensors=1000, manifest=False)
    assert gguf_files(tmp_path) == ["model.gguf"] and result.output == str(tmp_path / "model.gguf")
    assert (tmp_path / "model.gguf").read_bytes() == single.read_bytes()


def test_each_split_written_alone(qwen2_checkpoint: Path, ours: dict[str, tuple[Any, Path]], tmp_path: Path) -> None:
    """write_split(i) on its own (as one worker of a distributed run would) writes file i's bytes."""
    result, folder = ours["max-size"]
    checkpoint, plan = plan_gguf(qwen2_checkpoint, "f16")
    vocab = export_vocab(checkpoint.root, plan.mapping.vocab_size, prefer=plan.mapping.tokenizer_kinds)
    metadata = gguf_writer.hf_metadata(plan, checkpoint, vocab)
    splits = gguf_split.plan_for(plan, max_size="50K", no_tensor_first_split=True)
    for i in reversed(range(splits.count)):
        rec = gguf_split.write_split(tmp_path / "model.gguf", plan, metadata, splits, i, arch=plan.mapping.arch_name)
        assert rec == {k: v if k != "path" else Path(v).name for k, v in result.outputs[i].items()
                       if k in ("path", "bytes", "sha256")}
        assert (tmp_path / rec["path"]).read_bytes() == (folder / rec["path"]).read_bytes()
    # an explicit assignment (quantize --keep-split): the same counts give the same files
    kept = gguf_split.splits_from_counts([len(r) for r in splits.ranges])
    assert kept == splits
    assert_no_temps(tmp_path)


# --- runtimes and readers ------------------------------------------------------------------------

@pytest.mark.slow
def test_llama_cpp_loads_the_split_set(ours: dict[str, tuple[Any, Path]], single: Path) -> None:
    """llama-cpp-python, given the first file, loads the whole set: the same logits as the single file."""
    from runtimes import llama_last_logits

    tokens = [9707, 11, 1879, 0, 358, 1079, 264]
    expected = llama_last_logits(single, tokens)
    for case in CASES:
        result, _ = ours[case]
        got = llama_last_logits(Path(result.output), tokens)
        assert np.array_equal(got, expected), case


@pytest.mark.slow
def test_converter_split_set_reads_back(reference: dict[str, Path], single: Path) -> None:
    """GGUFSource reads the converter's sets (from any of their files) as the single file's model."""
    one = GGUFSource.open(single)
    for case, folder in reference.items():
        files = gguf_files(folder)
        for name in (files[0], files[-1]):
            src = GGUFSource.open(folder / name)
            assert [p.name for p in src.paths] == files and src.name == "model"
            assert src.metadata == one.metadata and src.value_types == one.value_types
            assert list(src.tensors) == list(one.tensors)
            for t in src:
                ref = one.tensors[t.name]
                assert (t.shape, t.type_name) == (ref.shape, ref.type_name)
                assert np.array_equal(t.raw(), ref.raw()), t.name


def test_validate_reads_the_set(qwen2_checkpoint: Path, ours: dict[str, tuple[Any, Path]]) -> None:
    """`bitconv validate` given any file of a set checks the whole set (through its first file)."""
    result, folder = ours["max-size"]
    report = bitconv.validate(result.outputs[2]["path"], qwen2_checkpoint)
    assert report.passed, report.verdict
    assert report.artifact == result.output and len(report.tensors) == result.n_tensors


def test_tl2_split_set_reads_back(bitnet_packed: Path, tmp_path: Path) -> None:
    """A TL2 set: the files after the first have no general.file_type (which tells bitnet.cpp's TL2
    from mainline's MXFP4, both type 39), so they are read with the first file's; the tiling
    sidecar is named after the first file, where readers look for it."""
    from bitconv.quant.tl import tl2_nbytes

    split = bitconv.convert(bitnet_packed, "gguf", "tl2", tmp_path / "m.gguf", split_max_tensors=8, manifest=False)
    assert len(split.outputs) == 3 and split.kernel_config == str(tmp_path / "m-00001-of-00003.kernel_config.ini")
    src = GGUFSource.open(split.outputs[-1]["path"])
    assert len(src.tensors) == split.n_tensors
    later = [t for t in src if t.path != src.paths[0] and t.type_name == "TL2"]
    assert later
    for t in later:
        assert t.info.nbytes == tl2_nbytes(*t.shape)
        codes, scale = t.codes_and_scale()
        assert set(np.unique(codes)) <= {-1, 0, 1} and np.isfinite(scale) and scale > 0


# --- bad input, failures --------------------------------------------------------------------------

def _copy_set(folder: Path, dest: Path) -> list[Path]:
    dest.mkdir()
    for p in folder.glob("*.gguf"):
        (dest / p.name).write_bytes(p.read_bytes())
    return sorted(dest.glob("*.gguf"))


def _refused(path: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as e:
        GGUFSource.open(path)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_bad_split_sets_refused(qwen2_checkpoint: Path, checkpoint_factory: Any, ours: dict[str, tuple[Any, Path]],
                                tmp_path: Path) -> None:
    _, folder = ours["max-tensors"]  # 6 files of 5, 5, 5, 5, 5, 2 tensors
    files = _copy_set(folder, tmp_path / "missing")
    files[2].unlink()
    _refused(files[0], r"model-00003-of-00006.gguf is missing")

    # a file of another set of the same model, renamed into the set
    other = tmp_path / "other"
    other.mkdir()
    bitconv.convert(qwen2_checkpoint, "gguf", "f16", other / "model.gguf", split_max_tensors=4, manifest=False)
    files = _copy_set(folder, tmp_path / "mixed")
    files[1].write_bytes((other / "model-00002-of-00007.gguf").read_bytes())
    _refused(files[0], "different split sets")
    files = _copy_set(folder, tmp_path / "mixed2")  # same split count, other boundaries: tensors twice
    bitconv.convert(qwen2_checkpoint, "gguf", "f16", other / "m6.gguf", split_max_tensors=6, split_max_size="20M",
                    manifest=False)  # 1, 6, 6, 6, 6, 2 tensors
    assert len(list(other.glob("m6-*-of-00006.gguf"))) == 6
    files[2].write_bytes((other / "m6-00003-of-00006.gguf").read_bytes())
    _refused(files[0], "also in another file|should hold")

    # a file of another model's set (same names and count, other shapes)
    bigger = checkpoint_factory("qwen2", "bf16", 1, "hub", hidden=96)
    bitconv.convert(bigger, "gguf", "f16", other / "big.gguf", split_max_tensors=5, manifest=False)
    files = _copy_set(folder, tmp_path / "models")
    files[3].write_bytes((other / "big-00004-of-00006.gguf").read_bytes())
    _refused(files[0], "different models")


def test_cli_split_options(qwen2_checkpoint: Path, ours: dict[str, tuple[Any, Path]], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("hf2gguf", qwen2_checkpoint, "-q", "f16", "-o", f"{out}/", "--split-max-tensors", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json_result(proc)["result"]
    names = [f"{qwen2_checkpoint.name}-f16-0000{i}-of-00006.gguf" for i in range(1, 7)]
    assert [Path(o["path"]).name for o in result["outputs"]] == names
    assert result["output"] == str(out / names[0])
    assert gguf_files(out) == names
    for name in names:  # the same bytes as the API's set (the file name is not in the file)
        assert (out / name).read_bytes() == (ours["max-tensors"][1] / name.replace(
            f"{qwen2_checkpoint.name}-f16", "model")).read_bytes()
    assert (out / f"{qwen2_checkpoint.name}-f16.gguf.manifest.json").is_file()

    proc = run_cli("hf2gguf", qwen2_checkpoint, "-o", f"{out}/", "--split-max-tensors", "5")  # exists: refused
    assert proc.returncode == 2 and "already exists" in error_line(proc)


@pytest.mark.parametrize("args, message", [
    (("--split-max-size", "12X"), "--split-max-size '12X'"),
    (("--split-max-size", "-1G"), "--split-max-size"),
    (("--split-max-tensors", "-2"), "--split-max-tensors"),
])
def test_cli_bad_split_options(qwen2_checkpoint: Path, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = run_cli("hf2gguf", qwen2_checkpoint, "-o", tmp_path / "m.gguf", *args)
    assert proc.returncode == 2
    assert message in (error_line(proc) if proc.stderr.startswith("error:") else proc.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt(), "rename"])
def test_failure_leaves_nothing(qwen2_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                failure: Any) -> None:
    """A failure writing the 4th file (or renaming the 3rd into place), or Ctrl-C: no file of the
    set, no temp file, no manifest."""
    real_write, real_replace = gguf_split.write_gguf, atomic.os.replace
    calls = {"write": 0, "replace": 0}

    def write(*a: Any, **kw: Any) -> str:
        calls["write"] += 1
        if calls["write"] == 4 and failure != "rename":
            raise failure
        return real_write(*a, **kw)

    def replace(src: Any, dst: Any) -> None:
        calls["replace"] += 1
        if calls["replace"] == 3:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(gguf_split, "write_gguf", write)
    monkeypatch.setattr(atomic.os, "replace", replace if failure == "rename" else real_replace)
    expected = {RuntimeError: RuntimeError, KeyboardInterrupt: Interrupted}.get(type(failure), OSError)
    with pytest.raises(expected) as e:
        bitconv.convert(qwen2_checkpoint, "gguf", "f16", tmp_path / "model.gguf", split_max_tensors=5)
    if isinstance(e.value, Interrupted):
        assert str(tmp_path) not in str(e.value)  # none of the set is reported as written
    assert list(tmp_path.iterdir()) == []
