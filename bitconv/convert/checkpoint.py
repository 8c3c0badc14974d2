"""Hugging Face checkpoints read lazily: config, tokenizer files and tensors from (sharded) safetensors.

Headers are parsed and checked against the file size up front (safetensors_read.py), so a truncated
or forged file fails before anything is written. Tensor bytes are read only when a tensor is converted
(``pread``, or a read-only mapping released after the work item); nothing stays mapped, so resident
memory does not grow with the checkpoint. bf16 is decoded from its raw bits, so the GGUF path needs no
torch. A GPTQ / AWQ / FP8 / compressed-tensors checkpoint's quantized linears are read as lazy float
weights (dequant.py).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import BitconvError, CheckpointError
from ..quiet import quiet_dependencies
from .lazy import LazyTensor, bf16_bits_to_f32, to_compute_dtype  # noqa: F401
from .safetensors_read import (FLOAT_DTYPES, MAX_HEADER_BYTES, SAFETENSORS_DTYPES, SafetensorsEntry,  # noqa: F401
                               _one_line, _pread_cols, _pread_reader, _pread_rows, read_safetensors_header)
from .st_files import ST_FILES, sentence_transformers_files

CONFIG_FILE = "config.json"
SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "qwen.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
)
HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                "tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt", "*.tiktoken", "chat_template*",
                "README.md", "LICENSE*", *ST_FILES, "*_Pooling/config.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _inside(root: Path, rel: str) -> Path:
    """Resolve a file named by an index, refusing names that leave the checkpoint directory."""
    try:  # a NUL byte or a lone surrogate: the OS cannot name it (os.stat raises ValueError, not OSError)
        if "\0" in rel:
            raise ValueError("NUL byte")
        os.fsencode(rel)
    except ValueError:
        raise CheckpointError(f"index names a file the file system cannot name: {rel!r}") from None
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel.strip() == "":
        raise CheckpointError(f"index names a file outside the checkpoint directory: {rel!r}")
    full = root / p
    # not only when `full` itself is a link: a linked folder on the way (sub -> /elsewhere) leaves too
    if full.is_symlink() or full.resolve() != full.absolute():
        _check_link(root, full)
    return full


def _check_link(root: Path, link: Path) -> None:
    """Links inside the checkpoint are fine; links out of it only into a HF cache's own blobs/."""
    target = link.resolve()
    real_root = root.resolve()
    if target.is_relative_to(real_root):
        return
    # <cache>/models--owner--name/snapshots/<rev>/file -> <cache>/models--owner--name/blobs/<sha>
    if root.parent.name == "snapshots" and target.parent == (root.parent.parent / "blobs").resolve():
        return
    raise CheckpointError(f"{link.name} is a symbolic link pointing outside the checkpoint ({target})")


def read_json_object(path: Path, missing: str, error: type[BitconvError] = CheckpointError) -> dict[str, Any]:
    """A JSON object from a checkpoint file, or `error` with a one-line reason."""
    if not path.is_file():
        raise error(missing)
    try:
        text = path.read_bytes().decode("utf-8")  # read_text's result, without its newline decoder's pass
        data = json.loads(text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text)
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from e
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8, an int of over 4300 digits
        raise error(f"{path}: invalid JSON ({_one_line(e)})") from e
    if not isinstance(data, dict):
        raise error(f"{path}: must hold a JSON object")
    return data


def load_config(root: Path) -> dict[str, Any]:
    return read_json_object(root / CONFIG_FILE,
                            f"no {CONFIG_FILE} in {root}: not a Hugging Face checkpoint directory")


@dataclass
class Checkpoint:
    """A local checkpoint directory; tensors are lazy handles in checkpoint order."""

    root: Path
    config: dict[str, Any]
    tensors: dict[str, LazyTensor]
    weight_files: list[Path]
    repo_id: str | None = None

    @classmethod
    def open(cls, source: str | os.PathLike[str], *, revision: str | None = None,
             allow_pickle: bool = False, dequantize: bool = True) -> "Checkpoint":
        """`dequantize`: a GPTQ / AWQ / FP8 / compressed-tensors checkpoint's quantized linears read as
        lazy float weights (convert/dequant.py); False keeps the stored parts (validate reads layouts it
        decodes itself)."""
        root, repo_id = resolve_source(source, revision)
        for name in (CONFIG_FILE, *TOKENIZER_FILES):  # what we read besides weights must stay inside too
            if (root / name).is_symlink():
                _check_link(root, root / name)
        config = load_config(root)
        tensors, files = _index_tensors(root, allow_pickle)
        if dequantize:
            from .dequant import dequantized_tensors

            tensors = dequantized_tensors(config, tensors)
        return cls(root=root, config=config, tensors=tensors, weight_files=files, repo_id=repo_id)

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures")
        if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
            raise CheckpointError(f"{self.root / CONFIG_FILE}: no \"architectures\" list naming the model class")
        return archs[0]

    @property
    def name(self) -> str:
        return self.root.name if self.repo_id is None else self.repo_id.split("/")[-1]

    def tokenizer_files(self) -> list[Path]:
        return [self.root / n for n in TOKENIZER_FILES if (self.root / n).is_file()]

    def sentence_transformers_files(self) -> list[Path]:
        return sentence_transformers_files(self.root)

    def companion_files(self) -> list[tuple[Path, str]]:
        """(file, relative name) of what a folder export copies beside its weights: tokenizer and
        sentence-transformers files."""
        files = self.tokenizer_files() + self.sentence_transformers_files()
        return [(p, p.relative_to(self.root).as_posix()) for p in files]

    def input_files(self) -> list[Path]:
        """Every file the conversion reads, for the manifest."""
        extra = [self.root / CONFIG_FILE] + self.tokenizer_files() + self.sentence_transformers_files()
        index = self.root / SAFETENSORS_INDEX
        if index.is_file():
            extra.append(index)
        return sorted(set(extra + self.weight_files))

    def __iter__(self) -> Iterator[LazyTensor]:
        return iter(self.tensors.values())


def resolve_source(source: str | os.PathLike[str], revision: str | None) -> tuple[Path, str | None]:
    """An existing path is a local checkpoint; otherwise `owner/name` is a hub repo id."""
    try:
        path = Path(source).expanduser()
    except RuntimeError:  # ~name of a user this machine does not have
        raise CheckpointError(f"{source}: no such user's home directory") from None
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; give the checkpoint directory (with config.json)")
        # absolute (links kept): `.` or `..` must still name the model (<name>-<quant>.gguf, general.name)
        return Path(os.path.abspath(path)), None
    text = str(source)
    if not _REPO_ID.match(text):
        raise CheckpointError(f"{text}: no such checkpoint directory")
    return _download_from_hub(text, revision), text


def _download_from_hub(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise CheckpointError(
            f"{repo_id}: no such directory, and huggingface_hub is not installed to fetch it as a hub repo "
            "(pip install 'bitconv[hub]')") from e
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        with quiet_dependencies():  # the hub's progress bars and warnings: --debug shows them
            local = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS,
                                      local_files_only=offline)
    except Exception as e:  # huggingface_hub raises many types: offline, 404, gated, connection
        why = "HF_HUB_OFFLINE=1 and it is not in the local cache" if offline else f"{type(e).__name__}: {e}"
        first = str(why).splitlines()[0] if str(why) else type(e).__name__
        raise CheckpointError(f"{repo_id}: not a local directory and cannot be fetched from the hub ({first})") from e
    return Path(local)


def _index_tensors(root: Path, allow_pickle: bool) -> tuple[dict[str, LazyTensor], list[Path]]:
    index = root / SAFETENSORS_INDEX
    single = root / SAFETENSORS_SINGLE
    if index.is_file():
        files = sorted(_shards_from_index(root, index), key=lambda p: p.name)
    elif single.is_file():
        files = [_inside(root, SAFETENSORS_SINGLE)]
    else:
        files = sorted(p for p in root.glob("*.safetensors") if p.is_file())
        if not files:
            return _pickle_tensors(root, allow_pickle)
        files = [_inside(root, p.name) for p in files]
    tensors: dict[str, LazyTensor] = {}
    for path in files:
        # Name order within a shard, shards in file-name order: llama.cpp's converter order, and
        # independent of how the writer happened to lay the file out.
        for entry in sorted(read_safetensors_header(path), key=lambda e: e.name):
            if entry.name in tensors:
                raise CheckpointError(f"tensor {entry.name} appears in more than one shard")
            tensors[entry.name] = LazyTensor(entry.name, entry.dtype, entry.shape, entry.end - entry.begin,
                                             path, _pread_reader(path, entry), _pread_rows(path, entry),
                                             _pread_cols(path, entry))
    if index.is_file():
        _check_index_complete(index, tensors)
    return tensors, files


def _check_index_complete(index: Path, tensors: dict[str, LazyTensor]) -> None:
    """A tensor the index lists but no shard holds (a lost lm_head, say) must not vanish silently."""
    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]  # validated by _shards_from_index
    for name, rel in weight_map.items():
        if name not in tensors:
            raise CheckpointError(f"tensor {name} is listed in {index.name} (in {rel}) but no shard holds it")


def _shards_from_index(root: Path, index: Path) -> list[Path]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map must map tensor names to file names")
    except (ValueError, RecursionError, KeyError, TypeError) as e:  # ValueError: bad JSON or UTF-8
        raise CheckpointError(f"{index.name}: invalid index ({_one_line(e)})") from e
    if not weight_map:
        raise CheckpointError(f"{index.name}: invalid index (weight_map lists no tensors)")
    files: list[Path] = []
    for rel in dict.fromkeys(weight_map.values()):
        path = _inside(root, rel)
        if not path.is_file():
            raise CheckpointError(f"shard {rel} is listed in {index.name} but missing from {root}")
        files.append(path)
    return files


def _pickle_tensors(root: Path, allow_pickle: bool) -> tuple[dict[str, LazyTensor], list[Path]]:
    index = root / PICKLE_INDEX
    if index.is_file():
        files = _shards_from_index(root, index)  # validates the JSON; an empty map is an error
    elif (root / PICKLE_SINGLE).is_file():
        files = [_inside(root, PICKLE_SINGLE)]
    else:
        raise CheckpointError(f"no model.safetensors (or shards with {SAFETENSORS_INDEX}) in {root}")
    if not allow_pickle:
        raise CheckpointError(
            f"{files[0].name} is a pickle, which can run code when loaded; convert it to safetensors, "
            "or pass --allow-pickle to load it with torch.load(weights_only=True)")
    try:
        import torch
    except ImportError as e:
        raise CheckpointError("reading .bin checkpoints needs torch (pip install 'bitconv[torch]')") from e
    tensors: dict[str, LazyTensor] = {}
    for path in files:
        if not path.is_file():
            raise CheckpointError(f"shard {path.name} is listed in {PICKLE_INDEX} but missing from {root}")
        try:
            with quiet_dependencies():
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, ...
            raise CheckpointError(f"{path.name}: cannot load with weights_only=True ({type(e).__name__})") from e
        if not isinstance(state, dict):
            raise CheckpointError(f"{path.name}: holds a {type(state).__name__}, not a state dict of tensors")
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"{path.name}: {name} is a {type(t).__name__}, not a tensor")
            if name in tensors:
                raise CheckpointError(f"tensor {name} appears in more than one shard")
            tensors[name] = _torch_lazy(name, t, path)
    return tensors, files


_TORCH_DTYPES = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
                 "torch.int8": "I8", "torch.uint8": "U8", "torch.int32": "I32", "torch.int64": "I64"}


def _torch_lazy(name: str, t: Any, path: Path) -> LazyTensor:
    dtype = _TORCH_DTYPES.get(str(t.dtype))
    if dtype is None:
        raise CheckpointError(f"{name}: unsupported dtype {t.dtype} in {path.name}")

    def as_numpy(c: Any) -> np.ndarray:
        import torch
        c = c.contiguous()
        if dtype == "BF16":
            return c.view(torch.int16).numpy().view(np.uint16).copy()
        return c.numpy().copy()

    def read() -> np.ndarray:
        return as_numpy(t)

    def read_rows(lo: int, hi: int) -> np.ndarray:
        k = t.shape[-1] if t.dim() else 1
        return as_numpy(t.reshape(-1, k)[lo:hi])

    return LazyTensor(name, dtype, tuple(t.shape), t.numel() * t.element_size(), path, read, read_rows)
