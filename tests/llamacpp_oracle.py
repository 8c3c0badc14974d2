"""llama.cpp's own ``convert_hf_to_gguf.py`` as a test oracle for bitconv.

The reference converter is taken from the llama-cpp-python sdist (pinned below), which
vendors llama.cpp together with its private copy of ``gguf-py``.  That copy is newer than the
``gguf`` wheel on PyPI and the differences matter for the output (e.g. its ``SpecialVocab``
writes ``add_bos_token``/``add_eos_token`` = False for a ByteLevel post-processor), so the
converter must run against it and not against whatever ``gguf`` is installed.

Public API
----------
``llamacpp_source() -> Path``
    ``.../vendor/llama.cpp`` of the sdist; downloaded with pip and extracted once per machine.
``run_reference_converter(model_dir, outtype, out) -> Path``
    Runs ``convert_hf_to_gguf.py`` in a subprocess with the current interpreter.
``run_reference_converter_batch(jobs, log) -> list[Path]``
    Several conversions in one subprocess (the converter's imports paid once).
``compare_gguf(ours, ref, *, check_tokenizer=True, check_hparams=True) -> list[str]``
    Human-readable differences that matter for byte-identity of the model (empty = same).
``read_gguf(path) -> GGUFFile``
    Fast GGUF parser used by the comparisons (gguf.GGUFReader needs ~8 s per file for a
    151936-token vocabulary; the self-test checks both agree).
``metadata_diff(ours, ref) -> dict``
    Informational diff of all KV pairs (``general.*`` naming may legitimately differ).
``file_diff(ours, ref) -> str | None``
    First differing byte of the two files, the strictest check.

Errors: ``ReferenceUnavailable`` (sdist cannot be fetched, or the converter's Python
dependencies are missing) becomes ``pytest.skip`` on a developer's machine and a failure under
``CI=true`` (``skip_or_fail``): a green CI must mean the identity tests ran.
``ReferenceConverterError`` (the converter ran and failed) is always a real failure.
A failed fetch is remembered for the rest of the process: one try per test run.

Environment knobs: ``BITCONV_LLAMACPP_DIR`` points at an already extracted ``vendor/llama.cpp``
(skips the download); ``BITCONV_TEST_CACHE`` overrides the cache root (default
``$XDG_CACHE_HOME/bitconv-tests`` or ``~/.cache/bitconv-tests``, shared with tests/fixtures.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from independent import tl2_padded_size

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_TOP = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
VENDOR_SUBDIR = "vendor/llama.cpp"
# Only what convert_hf_to_gguf.py needs (the full sdist is ~76 MB compressed).
_WANTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "requirements/", "LICENSE")
_COMPLETE_MARKER = ".bitconv-complete"

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "tq1_0", "tq2_0")
I2_S, TL1, TL2 = 36, 38, 39  # bitnet.cpp's type ids

# Python modules the converter imports on the Qwen paths (import name -> pip name).
# sentencepiece is needed even for BPE-only Qwen2/Qwen3 checkpoints: Qwen2Model.set_vocab
# tries _set_vocab_sentencepiece first, which imports sentencepiece before it looks for
# tokenizer.model (conversion/qwen.py:60-64, conversion/base.py:2094).
CONVERTER_REQUIREMENTS: dict[str, str] = {
    "torch": "torch",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "sentencepiece": "sentencepiece",
    "numpy": "numpy",
    "yaml": "pyyaml",
    "tqdm": "tqdm",
}


class ReferenceUnavailable(RuntimeError):
    """The reference converter cannot be used here (no sdist, missing deps): skip, not fail."""


class ReferenceConverterError(RuntimeError):
    """convert_hf_to_gguf.py ran and failed."""


# --------------------------------------------------------------------------- sdist


def _cache_root() -> Path:
    base = os.environ.get("BITCONV_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bitconv-tests"
    )
    return Path(base)


def _looks_complete(vendor: Path) -> bool:
    return (vendor / "convert_hf_to_gguf.py").is_file() and (vendor / "conversion" / "qwen.py").is_file() and (
        vendor / "gguf-py" / "gguf" / "gguf_writer.py"
    ).is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: rely on the atomic rename alone
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def skip_or_fail(reason: str) -> None:
    """A reference the suite needs is missing: skip locally, fail under CI (never a silent green)."""
    import pytest

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"reference unavailable under CI: {reason}", pytrace=False)
    pytest.skip(reason)


# The error of the first failed fetch in this process: later callers get it at once.
_FETCH_ERROR: ReferenceUnavailable | None = None


def pip_download_command(dest: Path) -> list[str]:
    """pip fetching only the sdist. --no-binary names llama-cpp-python alone: the all-packages value
    would apply to its build dependencies too, and pip would bootstrap CMake from source (~30 min on
    2 cores) just to read the sdist's metadata."""
    return [
        sys.executable, "-m", "pip", "download", "--no-binary", "llama-cpp-python", "--no-deps",
        "--disable-pip-version-check", f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(dest),
    ]


def _pip_download(dest: Path) -> Path:
    cmd = pip_download_command(dest)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ReferenceUnavailable(f"pip download of llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} failed: {e}") from e
    tarballs = sorted(dest.glob(f"{SDIST_TOP}.tar.gz")) or sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if not tarballs:
        # pip may also fail after saving the file (metadata preparation); only a missing file counts.
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise ReferenceUnavailable(
            f"could not fetch llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sdist with pip (rc={proc.returncode}):\n{tail}"
        )
    return tarballs[0]


def _extract(tarball: Path, dest: Path) -> None:
    prefix = f"{SDIST_TOP}/{VENDOR_SUBDIR}/"
    with tarfile.open(tarball, "r:gz") as tf:
        members = []
        for m in tf.getmembers():
            if not m.name.startswith(prefix):
                continue
            rel = m.name[len(prefix):]
            if not any(rel == w or rel.startswith(w) for w in _WANTED):
                continue
            if not (m.isfile() or m.isdir()):
                continue  # no links/devices
            members.append(m)
        if not members:
            raise ReferenceUnavailable(f"{tarball.name} has no {prefix}")
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            for m in members:
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise ReferenceUnavailable(f"unsafe path in sdist: {m.name}")
            tf.extractall(dest, members=members)


def llamacpp_source() -> Path:
    """Return ``vendor/llama.cpp`` of the llama-cpp-python sdist, fetching it once per machine.

    Safe to call from parallel processes: a file lock serializes the download and the result is
    published by an atomic rename, so nobody ever sees a half-extracted tree.
    Raises ``ReferenceUnavailable`` only when pip cannot fetch the sdist; a failure is cached
    for the process, so one test run tries the download once.
    """
    global _FETCH_ERROR
    override = os.environ.get("BITCONV_LLAMACPP_DIR")
    if override:
        vendor = Path(override)
        if not _looks_complete(vendor):
            raise ReferenceUnavailable(f"BITCONV_LLAMACPP_DIR={override} is not a llama.cpp tree with convert_hf_to_gguf.py")
        return vendor

    root = _cache_root()
    final = root / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"
    vendor = final / VENDOR_SUBDIR
    if (final / _COMPLETE_MARKER).is_file() and _looks_complete(vendor):
        return vendor

    with _file_lock(root / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}.lock"):
        if (final / _COMPLETE_MARKER).is_file() and _looks_complete(vendor):
            return vendor
        if _FETCH_ERROR is not None:
            raise _FETCH_ERROR
        if final.exists():  # leftover without marker (should not happen with the rename)
            shutil.rmtree(final, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".llamacpp-", dir=root))
        try:
            tarball = _pip_download(work / "dl")
            _extract(tarball, work / "x")
            staged = work / "x" / SDIST_TOP
            if not _looks_complete(staged / VENDOR_SUBDIR):
                raise ReferenceUnavailable(f"{tarball.name} does not contain convert_hf_to_gguf.py + conversion/ + gguf-py/")
            (staged / _COMPLETE_MARKER).write_text(f"{tarball.name}\n")
            os.rename(staged, final)
        except ReferenceUnavailable as e:
            _FETCH_ERROR = e
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return vendor


# --------------------------------------------------------------------------- converter


def missing_converter_requirements() -> list[str]:
    """pip names of the converter's dependencies that the current interpreter lacks."""
    return [pip for mod, pip in CONVERTER_REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]


def reference_converter_command(
    model_dir: str | os.PathLike[str],
    outtype: str,
    out: str | os.PathLike[str],
    extra_args: tuple[str, ...] = (),
) -> tuple[list[str], dict[str, str]]:
    """(argv, env) that run llama.cpp's converter the way run_reference_converter does."""
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {OUTTYPES}, got {outtype!r}")
    missing = missing_converter_requirements()
    if missing:
        raise ReferenceUnavailable(f"convert_hf_to_gguf.py needs these Python packages: {' '.join(missing)}")
    vendor = llamacpp_source()
    gguf_py = vendor / "gguf-py"
    env = dict(os.environ)
    # convert_hf_to_gguf.py and conversion/base.py put gguf-py on sys.path unless NO_LOCAL_GGUF
    # is set; the installed gguf wheel is too old for this converter (and differs in vocab.py).
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = os.pathsep.join([str(gguf_py)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable, str(vendor / "convert_hf_to_gguf.py"), str(Path(model_dir).resolve()),
        "--outtype", outtype, "--outfile", str(Path(out).resolve()), *extra_args,
    ]
    return cmd, env


def run_reference_converter(
    model_dir: str | os.PathLike[str],
    outtype: str,
    out: str | os.PathLike[str],
    *,
    timeout: float | None = None,
    extra_args: tuple[str, ...] = (),
) -> Path:
    """Run llama.cpp's ``convert_hf_to_gguf.py MODEL --outtype T --outfile OUT`` and return OUT.

    Uses ``sys.executable`` and the sdist's own ``gguf-py`` (the script puts it on sys.path
    unless ``NO_LOCAL_GGUF`` is set, so that variable is removed; ``PYTHONPATH`` is prefixed
    with it as well).  Runs offline (``HF_HUB_OFFLINE=1``).  stdout+stderr go to
    ``OUT.log``.  Note the converter derives ``general.name``/``basename``/``finetune``/
    ``size_label`` from ``model_dir``'s name (and README.md / config.json ``_name_or_path``).
    """
    cmd, env = reference_converter_command(model_dir, outtype, out, extra_args)
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    log = out.with_name(out.name + ".log")
    with open(log, "wb") as fh:
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(out.parent), timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ReferenceConverterError(f"{' '.join(cmd)} timed out after {timeout}s; log: {log}") from e
    if proc.returncode != 0 or not out.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise ReferenceConverterError(f"convert_hf_to_gguf.py failed (rc={proc.returncode}): {' '.join(cmd)}\n{tail}")
    return out


_BATCH_DRIVER = """
import sys
vendor, jobs = sys.argv[1], sys.argv[2:]
sys.path.insert(0, vendor)
import convert_hf_to_gguf
for model, outtype, out in zip(jobs[0::3], jobs[1::3], jobs[2::3]):
    sys.argv = ["convert_hf_to_gguf.py", model, "--outtype", outtype, "--outfile", out]
    convert_hf_to_gguf.main()
"""


def run_reference_converter_batch(
    jobs: list[tuple[str | os.PathLike[str], str, str | os.PathLike[str]]],
    log: str | os.PathLike[str],
    *,
    timeout: float | None = None,
) -> list[Path]:
    """Several (model_dir, outtype, out) conversions by llama.cpp's converter in one process: its
    ``main()`` called once per job with the argv the script would get, so torch, transformers and the
    converter are imported once (a tiny model's conversion takes seconds, the imports ~10 s more).
    Same environment as run_reference_converter; stdout+stderr of all jobs go to ``log``."""
    if not jobs:
        return []
    cmd, env = reference_converter_command(jobs[0][0], jobs[0][1], jobs[0][2])
    vendor = Path(cmd[1]).parent
    args: list[str] = []
    outs: list[Path] = []
    for model, outtype, out in jobs:
        if outtype not in OUTTYPES:
            raise ValueError(f"outtype must be one of {OUTTYPES}, got {outtype!r}")
        o = Path(out).resolve()
        o.parent.mkdir(parents=True, exist_ok=True)
        if o.exists():
            o.unlink()
        args += [str(Path(model).resolve()), outtype, str(o)]
        outs.append(o)
    log = Path(log)
    with open(log, "wb") as fh:
        try:
            proc = subprocess.run([sys.executable, "-c", _BATCH_DRIVER, str(vendor), *args], stdout=fh,
                                  stderr=subprocess.STDOUT, env=env, cwd=str(outs[0].parent), timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ReferenceConverterError(f"convert_hf_to_gguf.py batch timed out after {timeout}s; log: {log}") from e
    missing = [str(o) for o in outs if not o.is_file()]
    if proc.returncode != 0 or missing:
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise ReferenceConverterError(f"convert_hf_to_gguf.py batch failed (rc={proc.returncode}, missing "
                                      f"{missing}):\n{tail}")
    return outs


# --------------------------------------------------------------------------- reading GGUF
#
# gguf.GGUFReader builds one numpy memmap per array element, which takes ~8 s per file for a
# 151936-token Qwen vocabulary.  read_gguf() parses the same structure with struct in ~0.3 s;
# tests/test_llamacpp_oracle.py checks that both readers agree on converter output.

# GGUFValueType numbering (gguf spec)
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)
_VT_NAMES = (
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64",
)
_SCALAR_FMT = {
    _UINT8: "B", _INT8: "b", _UINT16: "H", _INT16: "h", _UINT32: "I", _INT32: "i", _FLOAT32: "f",
    _BOOL: "?", _UINT64: "Q", _INT64: "q", _FLOAT64: "d",
}
_SCALAR_NP = {
    _UINT8: "<u1", _INT8: "<i1", _UINT16: "<u2", _INT16: "<i2", _UINT32: "<u4", _INT32: "<i4", _FLOAT32: "<f4",
    _BOOL: "<u1", _UINT64: "<u8", _INT64: "<i8", _FLOAT64: "<f8",
}
GGUF_MAGIC = b"GGUF"


class KV:
    """One metadata value.  ``types``: (vtype,) or (ARRAY, subtype); ``raw``: exact bytes for
    scalars, ``list[bytes]`` for string arrays, ``np.ndarray`` for numeric arrays."""

    __slots__ = ("types", "raw")

    def __init__(self, types: tuple[int, ...], raw: Any):
        self.types = types
        self.raw = raw

    @property
    def is_array(self) -> bool:
        return self.types[0] == _ARRAY

    def type_name(self) -> str:
        return "/".join(_VT_NAMES[t] if 0 <= t < len(_VT_NAMES) else str(t) for t in self.types)

    def value(self) -> Any:
        """Python value (strings decoded, arrays as lists)."""
        if self.is_array:
            if isinstance(self.raw, list):
                return [_decode(x) if isinstance(x, bytes) else x for x in self.raw]
            return self.raw.tolist()
        t = self.types[0]
        if t == _STRING:
            return _decode(self.raw)
        return struct.unpack("<" + _SCALAR_FMT[t], self.raw)[0]

    def summary(self, limit: int = 8) -> Any:
        if self.is_array:
            n = len(self.raw)
            head = self.value()[:limit] if n > limit else self.value()
            return head if n <= limit else f"<array len={n} head={head!r}>"
        v = self.value()
        if isinstance(v, str) and len(v) > 200:
            return v[:200] + f"...<{len(v)} chars>"
        return v

    def same(self, other: "KV") -> bool:
        if self.types != other.types:
            return False
        if isinstance(self.raw, np.ndarray) or isinstance(other.raw, np.ndarray):
            return isinstance(self.raw, np.ndarray) and isinstance(other.raw, np.ndarray) and np.array_equal(self.raw, other.raw)
        return self.raw == other.raw


def _decode(b: bytes) -> str:
    return b.decode("utf-8", errors="backslashreplace")


class TensorInfo:
    __slots__ = ("name", "shape", "ggml_type", "offset", "n_bytes")

    def __init__(self, name: str, shape: tuple[int, ...], ggml_type: int, offset: int, n_bytes: int):
        self.name = name
        self.shape = shape  # ggml order (ne0 first), as stored in the file
        self.ggml_type = ggml_type
        self.offset = offset  # relative to GGUFFile.data_offset
        self.n_bytes = n_bytes

    @property
    def type_name(self) -> str:
        try:
            return _gguf().GGMLQuantizationType(self.ggml_type).name
        except Exception:
            return str(self.ggml_type)


class GGUFFile:
    """Header, KV pairs (in file order) and tensor infos of a GGUF file; data via ``tensor_bytes``."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.kv: dict[str, KV] = {}
        self.tensors: list[TensorInfo] = []
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            self._parse(mm)
        self.file_size = self.path.stat().st_size
        self._data: np.ndarray | None = None

    def _parse(self, mm: Any) -> None:
        if mm[:4] != GGUF_MAGIC:
            raise ValueError(f"{self.path}: not a GGUF file")
        (self.version,) = struct.unpack_from("<I", mm, 4)
        if self.version & 0xFFFF == 0:
            raise ValueError(f"{self.path}: big-endian GGUF is not supported")
        n_tensors, n_kv = struct.unpack_from("<QQ", mm, 8)
        off = 24
        unpack = struct.unpack_from

        def read_str(o: int) -> tuple[bytes, int]:
            (n,) = unpack("<Q", mm, o)
            o += 8
            return mm[o : o + n], o + n

        def read_val(vt: int, o: int) -> tuple[tuple[int, ...], Any, int]:
            if vt == _STRING:
                s, o = read_str(o)
                return (vt,), s, o
            if vt == _ARRAY:
                (sub,) = unpack("<I", mm, o)
                (n,) = unpack("<Q", mm, o + 4)
                o += 12
                if sub == _STRING:
                    items: list[Any] = []
                    append = items.append
                    for _ in range(n):
                        (ln,) = unpack("<Q", mm, o)
                        o += 8
                        append(mm[o : o + ln])
                        o += ln
                    return (vt, sub), items, o
                if sub == _ARRAY:
                    nested: list[Any] = []
                    sub_types: tuple[int, ...] = (sub,)
                    for _ in range(n):
                        t, v, o = read_val(_ARRAY, o)
                        sub_types = t
                        nested.append(tuple(v) if isinstance(v, list) else v.tobytes())
                    return (vt,) + sub_types, nested, o
                dt = np.dtype(_SCALAR_NP[sub])
                arr = np.frombuffer(mm, dtype=dt, count=n, offset=o).copy()
                return (vt, sub), arr, o + n * dt.itemsize
            size = struct.calcsize("<" + _SCALAR_FMT[vt])
            return (vt,), mm[o : o + size], o + size

        for _ in range(n_kv):
            key, off = read_str(off)
            (vt,) = unpack("<I", mm, off)
            off += 4
            types, raw, off = read_val(vt, off)
            self.kv[_decode(key)] = KV(types, raw)

        align_kv = self.kv.get("general.alignment")
        self.alignment = align_kv.value() if align_kv is not None and align_kv.types == (_UINT32,) else 32

        sizes = _gguf().GGML_QUANT_SIZES
        for _ in range(n_tensors):
            name, off = read_str(off)
            (nd,) = unpack("<I", mm, off)
            off += 4
            dims = unpack(f"<{nd}Q", mm, off)
            off += 8 * nd
            ttype, toff = unpack("<IQ", mm, off)
            off += 12
            n_el = 1
            for d in dims:
                n_el *= d
            if ttype in (I2_S, TL1):  # bitnet.cpp's types, unknown to gguf-py: codes, then f32 scale + 28 bytes
                n_bytes = n_el // 4 + 32
            elif ttype == TL2 and self.kv.get("general.file_type") is not None \
                    and self.kv["general.file_type"].value() == TL2:  # mainline uses 39 for MXFP4
                n_bytes = tl2_padded_size(n_el // dims[0], dims[0]) + 32
            else:
                block, tsize = sizes[_gguf().GGMLQuantizationType(ttype)]
                n_bytes = n_el // block * tsize
            self.tensors.append(TensorInfo(_decode(name), tuple(int(d) for d in dims), ttype, toff, n_bytes))
        self.tensor_info_end = off
        self.data_offset = (off + self.alignment - 1) // self.alignment * self.alignment

    def tensor_bytes(self, t: TensorInfo) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        start = self.data_offset + t.offset
        return self._data[start : start + t.n_bytes]


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Fast structural read of a GGUF file (little-endian, version 2/3)."""
    return GGUFFile(path)


# --------------------------------------------------------------------------- comparison


def _gguf() -> Any:
    try:
        import gguf  # noqa: PLC0415
    except ImportError:
        sys.path.insert(0, str(llamacpp_source() / "gguf-py"))
        import gguf  # noqa: PLC0415
    return gguf


_CHUNK = 1 << 26  # 64 MiB


def _compare_bytes(a: np.ndarray, b: np.ndarray) -> tuple[int, int] | None:
    """(number of differing bytes, first differing offset) or None if equal; chunked.

    A length difference counts each missing/extra byte as differing."""
    n = min(a.size, b.size)
    count = 0
    first = -1
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        x = np.asarray(a[start:stop])
        y = np.asarray(b[start:stop])
        if np.array_equal(x, y):
            continue
        ne = x != y
        if first < 0:
            first = start + int(np.argmax(ne))
        count += int(np.count_nonzero(ne))
    count += abs(int(a.size) - int(b.size))
    if count == 0:
        return None
    return count, (first if first >= 0 else n)


def _describe_item(kv: KV, i: int) -> str:
    x = kv.raw[i]
    if isinstance(x, bytes):
        return repr(_decode(x))
    if isinstance(x, np.generic):
        return repr(x.item())
    return repr(x)


def _compare_kv(key: str, a: KV | None, b: KV | None) -> list[str]:
    if a is None and b is None:
        return []
    if a is None:
        assert b is not None
        return [f"{key}: missing in ours (ref: {b.summary()!r})"]
    if b is None:
        return [f"{key}: extra in ours ({a.summary()!r}), absent in ref"]
    if a.types != b.types:
        return [f"{key}: value types differ: ours {a.type_name()} {a.summary()!r} vs ref {b.type_name()} {b.summary()!r}"]
    if not a.is_array:
        if a.raw != b.raw:
            return [f"{key}: ours {a.summary()!r} vs ref {b.summary()!r} ({a.type_name()})"]
        return []
    diffs: list[str] = []
    na, nb = len(a.raw), len(b.raw)
    if na != nb:
        diffs.append(f"{key}: length differs: ours {na} vs ref {nb}")
    n = min(na, nb)
    if isinstance(a.raw, np.ndarray):
        ne = np.asarray(a.raw[:n]) != np.asarray(b.raw[:n])
        bad = np.flatnonzero(ne)
        n_bad, first = int(bad.size), (int(bad[0]) if bad.size else None)
    else:
        n_bad, first = 0, None
        for i in range(n):
            if a.raw[i] != b.raw[i]:
                n_bad += 1
                if first is None:
                    first = i
    if n_bad:
        assert first is not None
        diffs.append(
            f"{key}: {n_bad} of {n} entries differ; first at [{first}]: "
            f"ours {_describe_item(a, first)} vs ref {_describe_item(b, first)}"
        )
    return diffs


# tokenizer.* arrays (compared element by element like every array)
TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores")
# general.* keys that change how the file is read, as opposed to naming/authorship
STRUCTURAL_GENERAL_KEYS = ("general.architecture", "general.file_type", "general.quantization_version", "general.alignment")


def _open(x: str | os.PathLike[str] | GGUFFile) -> GGUFFile:
    return x if isinstance(x, GGUFFile) else read_gguf(x)


def compare_gguf(
    ours: str | os.PathLike[str] | GGUFFile,
    ref: str | os.PathLike[str] | GGUFFile,
    *,
    check_tokenizer: bool = True,
    check_hparams: bool = True,
) -> list[str]:
    """Differences between two GGUF files that matter for byte-identical model content.

    Always: GGUF version, tensor data alignment, tensor name set and order, and per tensor its
    ggml type, shape and raw data bytes (count of differing bytes and first offset).
    ``check_tokenizer``: every ``tokenizer.*`` key - the arrays (tokens, token_type, merges,
    scores) element by element, the scalars (model, pre, bos/eos/pad/... ids, add_*_token,
    chat_template, ...) by value type and exact bytes.
    ``check_hparams``: every ``{arch}.*`` key plus general.architecture/file_type/
    quantization_version/alignment, by value type and exact bytes.
    Other ``general.*`` keys (name, basename, size_label, license, ...) are left to
    ``metadata_diff``.  Empty list = identical in every checked respect.
    """
    fa, fb = _open(ours), _open(ref)
    diffs: list[str] = []
    if fa.version != fb.version:
        diffs.append(f"GGUF version: ours {fa.version} vs ref {fb.version}")
    if fa.alignment != fb.alignment:
        diffs.append(f"alignment: ours {fa.alignment} vs ref {fb.alignment}")

    # --- tensors
    names_a = [t.name for t in fa.tensors]
    names_b = [t.name for t in fb.tensors]
    set_a, set_b = set(names_a), set(names_b)
    missing = [n for n in names_b if n not in set_a]
    extra = [n for n in names_a if n not in set_b]
    if missing:
        diffs.append(f"tensors missing in ours ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    if extra:
        diffs.append(f"tensors extra in ours ({len(extra)}): {extra[:20]}{' ...' if len(extra) > 20 else ''}")
    common_a = [n for n in names_a if n in set_b]
    common_b = [n for n in names_b if n in set_a]
    if common_a != common_b:
        i = next(k for k, (x, y) in enumerate(zip(common_a, common_b)) if x != y)
        diffs.append(
            f"tensor order differs at common index {i}: ours {common_a[i]!r} vs ref {common_b[i]!r} "
            f"(ours {common_a[max(0, i - 1):i + 3]}, ref {common_b[max(0, i - 1):i + 3]})"
        )
    by_name = {t.name: t for t in fa.tensors}
    for tb in fb.tensors:
        ta = by_name.get(tb.name)
        if ta is None:
            continue
        name = tb.name
        if ta.ggml_type != tb.ggml_type:
            diffs.append(f"{name}: type ours {ta.type_name} vs ref {tb.type_name}")
        if ta.shape != tb.shape:
            diffs.append(f"{name}: shape (ggml order, ne0 first) ours {list(ta.shape)} vs ref {list(tb.shape)}")
        r = _compare_bytes(fa.tensor_bytes(ta), fb.tensor_bytes(tb))
        if r is not None:
            count, first = r
            sizes = f"{tb.n_bytes} bytes" if ta.n_bytes == tb.n_bytes else f"ours {ta.n_bytes} / ref {tb.n_bytes} bytes"
            diffs.append(f"{name}: data differs in {count} bytes ({sizes}), first at byte {first}")

    # --- KV
    keys: list[str] = []
    if check_hparams:
        keys += list(STRUCTURAL_GENERAL_KEYS)
        for f in (fb, fa):
            arch = f.kv.get("general.architecture")
            if arch is not None and arch.types == (_STRING,):
                prefix = arch.value() + "."
                keys += [k for k in list(fb.kv) + list(fa.kv) if k.startswith(prefix)]
    if check_tokenizer:
        keys += [k for k in list(fb.kv) + list(fa.kv) if k.startswith("tokenizer.")]
    for key in dict.fromkeys(keys):
        diffs.extend(_compare_kv(key, fa.kv.get(key), fb.kv.get(key)))
    return diffs


def metadata_diff(ours: str | os.PathLike[str] | GGUFFile, ref: str | os.PathLike[str] | GGUFFile) -> dict[str, Any]:
    """All KV differences (informational; e.g. general.name legitimately differs).

    Returns ``{"only_ours": {key: value}, "only_ref": {key: value},
    "different": {key: (ours_value, ref_value)}, "order_differs": bool}``.  Long arrays and
    strings are summarized; a value-type difference shows as ``"<TYPE> value"``.
    ``order_differs`` tells whether the keys present in both files appear in a different
    order (which matters only for whole-file byte identity).
    """
    fa, fb = _open(ours), _open(ref)

    def show(kv: KV, other: KV) -> Any:
        return kv.summary() if kv.types == other.types else f"<{kv.type_name()}> {kv.summary()!r}"

    only_ours = {k: v.summary() for k, v in fa.kv.items() if k not in fb.kv}
    only_ref = {k: v.summary() for k, v in fb.kv.items() if k not in fa.kv}
    different = {
        k: (show(fa.kv[k], fb.kv[k]), show(fb.kv[k], fa.kv[k])) for k in fb.kv if k in fa.kv and not fa.kv[k].same(fb.kv[k])
    }
    common_a = [k for k in fa.kv if k in fb.kv]
    common_b = [k for k in fb.kv if k in fa.kv]
    return {"only_ours": only_ours, "only_ref": only_ref, "different": different, "order_differs": common_a != common_b}


def file_diff(ours: str | os.PathLike[str], ref: str | os.PathLike[str]) -> str | None:
    """None if the two files are byte-identical, else a description of the first difference."""
    size_a, size_b = os.path.getsize(ours), os.path.getsize(ref)
    a = np.memmap(ours, dtype=np.uint8, mode="r") if size_a else np.zeros(0, np.uint8)
    b = np.memmap(ref, dtype=np.uint8, mode="r") if size_b else np.zeros(0, np.uint8)
    r = _compare_bytes(a, b)
    if r is None:
        return None
    count, first = r
    where = ""
    try:
        f = read_gguf(ref)
        if first < f.data_offset:
            where = " (in header/KV/tensor-info section)"
        else:
            for t in f.tensors:
                start = f.data_offset + t.offset
                if start <= first < start + t.n_bytes:
                    where = f" (in tensor {t.name!r} at byte {first - start})"
                    break
            else:
                where = " (in alignment padding)"
    except Exception:
        pass
    return f"files differ: sizes ours {size_a} vs ref {size_b}; {count} differing bytes, first at offset {first}{where}"


def format_diffs(diffs: list[str], limit: int = 40) -> str:
    """Join a compare_gguf result for an assertion message."""
    more = f"\n... and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "\n".join(diffs[:limit]) + more
