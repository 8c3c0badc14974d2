"""Checkpoint reader: safetensors written by the official writers read back exactly (property
tests over shapes, dtypes and shard layouts), HF cache snapshots accepted, links out refused."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from bitconv.convert.checkpoint import Checkpoint
from bitconv.errors import CheckpointError

CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I8": np.int8, "U8": np.uint8}


def write_config(d: Path) -> None:
    (d / "config.json").write_text(json.dumps(CONFIG))


def random_raw(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Random bit patterns (NaN payloads, infinities and subnormals included) in the stored dtype."""
    np_dtype = np.dtype(DTYPES[dtype])
    n = int(np.prod(shape, dtype=np.int64))
    bits = rng.integers(0, 256, size=n * np_dtype.itemsize, dtype=np.uint8)
    return bits.view(np_dtype).reshape(shape).copy()


def to_torch(dtype: str, raw: np.ndarray) -> torch.Tensor:
    if dtype == "BF16":
        return torch.from_numpy(raw.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(raw.copy())


def write_shard(path: Path, tensors: dict[str, tuple[str, np.ndarray]], writer: str) -> None:
    if writer == "torch" or any(dt == "BF16" for dt, _ in tensors.values()):
        save_torch({n: to_torch(dt, raw) for n, (dt, raw) in tensors.items()}, str(path), metadata={"format": "pt"})
    else:
        save_numpy({n: raw for n, (_, raw) in tensors.items()}, str(path))


shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)
tensor_specs = st.lists(st.tuples(st.sampled_from(sorted(DTYPES)), shapes), min_size=1, max_size=7)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=tensor_specs, layout=st.sampled_from(["single", "index", "glob"]), n_shards=st.integers(1, 4),
       assign_seed=st.integers(0, 2**32 - 1), writer=st.sampled_from(["numpy", "torch"]),
       value_seed=st.integers(0, 2**32 - 1))
# empty and 0-d tensors of every dtype, spread over two indexed shards
@example(specs=[(dt, shape) for dt in sorted(DTYPES) for shape in [(0,), (3, 0), (), (2, 0, 4)]], layout="index",
         n_shards=2, assign_seed=1, writer="torch", value_seed=0)
def test_round_trip(specs: list[tuple[str, tuple[int, ...]]], layout: str, n_shards: int, assign_seed: int,
                    writer: str, value_seed: int) -> None:
    rng = np.random.default_rng(value_seed)
    tensors = {f"model.layers.{i}.t{i}.weight": (dt, random_raw(rng, dt, shape)) for i, (dt, shape) in enumerate(specs)}
    names = list(tensors)
    if layout == "single":
        n_shards = 1
    n_shards = min(n_shards, len(names))
    owner = np.random.default_rng(assign_seed).integers(0, n_shards, size=len(names))
    owner[:n_shards] = np.arange(n_shards)  # every shard holds at least one tensor
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "ckpt"
        d.mkdir()
        write_config(d)
        weight_map = {}
        for s in range(n_shards):
            fname = "model.safetensors" if layout == "single" else f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
            part = {n: tensors[n] for n, o in zip(names, owner) if o == s}
            write_shard(d / fname, part, writer)
            weight_map.update({n: fname for n in part})
        if layout == "index":
            (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

        ck = Checkpoint.open(d)
        assert ck.architecture == "Qwen2ForCausalLM"
        assert sorted(ck.tensors) == sorted(names)
        assert sorted(p.name for p in ck.weight_files) == sorted(set(weight_map.values()))
        for name, (dtype, raw) in tensors.items():
            lt = ck.tensors[name]
            assert lt.dtype == dtype, name
            assert lt.shape == raw.shape, name
            assert lt.nbytes == raw.nbytes
            assert lt.source.name == weight_map[name]
            got_raw = lt.load_raw()
            assert got_raw.shape == raw.shape and got_raw.dtype == raw.dtype
            assert got_raw.tobytes() == raw.tobytes(), name
            got = lt.load()
            assert got.shape == raw.shape, name
            if dtype == "BF16":
                want = to_torch(dtype, raw).to(torch.float32).numpy()
                assert got.dtype == np.float32
                assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes(), name
            elif dtype in ("F32", "F16"):
                assert got.dtype == raw.dtype and got.tobytes() == raw.tobytes(), name
            else:
                assert got.dtype == np.float32
                np.testing.assert_array_equal(got, raw.astype(np.float32))


def test_bf16_known_values(tmp_path: Path) -> None:
    """bf16 widening against values whose f32 image is known, including ±0, ±inf, subnormals."""
    vals = torch.tensor([0.0, -0.0, 1.0, -2.5, 3.140625, float("inf"), float("-inf"), 1e-40, 65504.0, 3e38],
                        dtype=torch.bfloat16)
    write_config(tmp_path)
    save_torch({"w": vals.reshape(2, 5)}, str(tmp_path / "model.safetensors"))
    got = Checkpoint.open(tmp_path).tensors["w"].load()
    want = vals.to(torch.float32).numpy().reshape(2, 5)
    assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes()


# --- HF cache layout and symbolic links --------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_hf_cache(cache: Path, repo: str = "o/n", rev: str = "0123456789abcdef0123456789abcdef01234567",
                  sharded: bool = False) -> tuple[Path, dict[str, np.ndarray]]:
    """A hub cache entry as huggingface_hub lays it out: files in blobs/, snapshots/<rev>/ links to them."""
    owner, name = repo.split("/")
    repo_dir = cache / f"models--{owner}--{name}"
    blobs, snap = repo_dir / "blobs", repo_dir / "snapshots" / rev
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(rev)
    values = {"model.embed_tokens.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
              "model.norm.weight": np.full(4, 0.5, np.float32)}
    files: dict[str, bytes] = {"config.json": json.dumps(CONFIG).encode()}
    with tempfile.TemporaryDirectory() as tmp:
        if sharded:
            weight_map = {}
            for i, (k, v) in enumerate(values.items()):
                fname = f"model-{i + 1:05d}-of-00002.safetensors"
                save_numpy({k: v}, f"{tmp}/{fname}")
                files[fname] = Path(f"{tmp}/{fname}").read_bytes()
                weight_map[k] = fname
            files["model.safetensors.index.json"] = json.dumps({"weight_map": weight_map}).encode()
        else:
            save_numpy(values, f"{tmp}/m.safetensors")
            files["model.safetensors"] = Path(f"{tmp}/m.safetensors").read_bytes()
    for fname, data in files.items():
        sha = _sha(data)
        (blobs / sha).write_bytes(data)
        os.symlink(f"../../blobs/{sha}", snap / fname)
    return snap, values


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_hf_cache_snapshot_accepted(tmp_path: Path, sharded: bool) -> None:
    snap, values = make_hf_cache(tmp_path / "hub", sharded=sharded)
    ck = Checkpoint.open(snap)
    assert sorted(ck.tensors) == sorted(values)
    for k, v in values.items():
        np.testing.assert_array_equal(ck.tensors[k].load(), v)
    assert all(p.is_symlink() for p in ck.weight_files)


def test_hf_cache_repo_id_offline(tmp_path: Path) -> None:
    """A repo id resolves to its cached snapshot with HF_HUB_OFFLINE=1 (no network touched)."""
    cache = tmp_path / "hub"
    snap, values = make_hf_cache(cache, repo="someone/tiny-model")
    code = ("from bitconv.convert.checkpoint import Checkpoint; import json; c = Checkpoint.open('someone/tiny-model');"
            "print(json.dumps([str(c.root), c.name, c.repo_id, sorted(c.tensors)]))")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    root, name, repo_id, names = json.loads(proc.stdout)
    assert Path(root).resolve() == snap.resolve()
    assert (name, repo_id, names) == ("tiny-model", "someone/tiny-model", sorted(values))


def _valid_shard(path: Path) -> Path:
    save_numpy({"model.norm.weight": np.ones(4, np.float32)}, str(path))
    return path


@pytest.mark.parametrize("layout", ["single", "index", "glob"])
def test_symlink_out_of_checkpoint_refused(tmp_path: Path, layout: str) -> None:
    elsewhere = _valid_shard(tmp_path / "elsewhere.safetensors")
    d = tmp_path / "ckpt"
    d.mkdir()
    write_config(d)
    fname = {"single": "model.safetensors", "index": "model-00001-of-00001.safetensors",
             "glob": "weights.safetensors"}[layout]
    os.symlink(elsewhere, d / fname)
    if layout == "index":
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.norm.weight": fname}}))
    with pytest.raises(CheckpointError, match="symbolic link pointing outside the checkpoint"):
        Checkpoint.open(d)


@pytest.mark.parametrize("fname", ["config.json", "tokenizer.json"])
def test_symlinked_metadata_out_of_checkpoint_refused(tmp_path: Path, fname: str) -> None:
    d = tmp_path / "ckpt"
    d.mkdir()
    write_config(d)
    _valid_shard(d / "model.safetensors")
    outside = tmp_path / f"outside-{fname}"
    os.replace(d / fname, outside) if (d / fname).exists() else outside.write_text("{}")
    os.symlink(outside, d / fname)
    with pytest.raises(CheckpointError, match="symbolic link pointing outside the checkpoint"):
        Checkpoint.open(d)


def test_symlinked_subfolder_out_of_checkpoint_refused(tmp_path: Path) -> None:
    """The link may be a folder on the way, not the file itself: `sub -> /elsewhere`, index names sub/x."""
    outside = tmp_path / "outside"
    outside.mkdir()
    _valid_shard(outside / "x.safetensors")
    d = tmp_path / "ckpt"
    d.mkdir()
    write_config(d)
    os.symlink(outside, d / "sub")
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "sub/x.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint"):
        Checkpoint.open(d)


def test_symlink_inside_checkpoint_accepted(tmp_path: Path) -> None:
    d = tmp_path / "ckpt"
    (d / "store").mkdir(parents=True)
    write_config(d)
    _valid_shard(d / "store" / "real.safetensors")
    os.symlink("store/real.safetensors", d / "model.safetensors")
    ck = Checkpoint.open(d)
    np.testing.assert_array_equal(ck.tensors["model.norm.weight"].load(), np.ones(4, np.float32))


@pytest.mark.parametrize("target", ["other-repo-blobs", "snapshot-sibling-folder"])
def test_hf_cache_link_outside_own_blobs_refused(tmp_path: Path, target: str) -> None:
    snap, _ = make_hf_cache(tmp_path / "hub")
    (snap / "model.safetensors").unlink()
    if target == "other-repo-blobs":
        evil = tmp_path / "hub" / "models--evil--x" / "blobs"
    else:
        evil = snap.parent.parent / "not-blobs"
    evil.mkdir(parents=True)
    _valid_shard(evil / "deadbeef")
    os.symlink(os.path.relpath(evil / "deadbeef", snap), snap / "model.safetensors")
    with pytest.raises(CheckpointError, match="outside the checkpoint"):
        Checkpoint.open(snap)


def test_index_with_absolute_or_parent_names_refused(tmp_path: Path) -> None:
    for rel in ("../x.safetensors", "/etc/x.safetensors", "a/../../x.safetensors", " "):
        d = tmp_path / f"ckpt{abs(hash(rel))}"
        d.mkdir()
        write_config(d)
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": rel}}))
        with pytest.raises(CheckpointError, match="outside the checkpoint"):
            Checkpoint.open(d)
