"""Helpers shared by the CLI-level tests: run the real `bitconv` CLI, hand-made safetensors files,
checkpoint copies, and the "nothing left behind" check."""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

TMP_GLOB = ".*.bitconv-tmp.*"
QWEN2_CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.update(extra)
    return env


def sigint_as_in_a_terminal() -> None:
    """A Popen `preexec_fn`: a test runner started in the background (`make test &`, CI) hands its
    children SIGINT ignored, and Python then installs no Ctrl-C handler; a user's terminal does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None,
            env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`python -m bitconv ARGS` as a user runs it: stdout/stderr captured as text, no terminal."""
    return subprocess.run([sys.executable, "-m", "bitconv", *map(str, args)], cwd=cwd, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def json_result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """stdout must be exactly one JSON object (one line) and nothing else."""
    text = proc.stdout.strip()
    assert text, f"no JSON on stdout; stderr: {proc.stderr[-2000:]}"
    assert len(text.splitlines()) == 1, f"stdout is not one line: {proc.stdout!r}"
    obj = json.loads(text)
    assert isinstance(obj, dict)
    return obj


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The CLI's one error line on stderr ("error: ..."); fails on tracebacks or wrapped messages."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, f"expected exactly one 'error:' line on stderr, got: {proc.stderr!r}"
    # one line: nothing after the error line (a wrapped message would continue on the next line)
    assert lines[-1] == errors[0], f"error message is not a single line: {proc.stderr!r}"
    return errors[0]


def assert_nothing_written(folder: Path, output: Path | None = None) -> None:
    if output is not None:
        assert not output.exists(), f"{output} exists after a failed run"
    stray = sorted(p.name for p in folder.glob(TMP_GLOB))
    assert not stray, f"stray temp files left in {folder}: {stray}"


def assert_no_temps(folder: Path) -> None:
    stray = sorted(p.name for p in folder.glob(TMP_GLOB))
    assert not stray, f"stray temp files left in {folder}: {stray}"


# --- hand-made safetensors -------------------------------------------------------------------

def write_raw_safetensors(path: Path, header: dict[str, Any], data: bytes, *,
                          header_len: int | None = None) -> Path:
    """8-byte little-endian header length + JSON header + data, with no checks (to forge bad files)."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def write_config(folder: Path, config: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config if config is not None else QWEN2_CONFIG))
    return folder


def clone_checkpoint(src: Path, dst: Path) -> Path:
    """A private, writable copy of a (cached, shared) fixture checkpoint."""
    shutil.copytree(src, dst, symlinks=False)
    return dst


# --- a small independent GGUF reader (gguf-py's GGUFReader parses every vocab string: seconds) ---

_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                12: "<d"}


def read_gguf_tensors(path: Path) -> dict[str, tuple[int, tuple[int, ...], bytes]]:
    """name → (ggml type id, numpy-order shape, raw data bytes), straight from the file layout."""
    import gguf

    buf = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (v,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        s = buf[pos:pos + n].decode("utf-8", errors="replace")
        pos += n
        return s

    def skip_value(vtype: int) -> Any:
        nonlocal pos
        if vtype in _GGUF_SCALAR:
            return take(_GGUF_SCALAR[vtype])
        if vtype == 8:
            return string()
        if vtype == 9:
            sub, count = take("<I"), take("<Q")
            if sub in _GGUF_SCALAR:
                pos += count * struct.calcsize(_GGUF_SCALAR[sub])
            else:
                for _ in range(count):
                    skip_value(sub)
            return None
        raise ValueError(f"bad GGUF value type {vtype}")

    assert buf[:4] == b"GGUF"
    pos = 4
    take("<I")
    n_tensors, n_kv = take("<Q"), take("<Q")
    alignment = gguf.GGUF_DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = string()
        v = skip_value(take("<I"))
        if key == "general.alignment":
            alignment = int(v)
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]
        infos.append((name, dims, take("<I"), take("<Q")))
    start = -(-pos // alignment) * alignment
    out = {}
    for name, dims, tid, off in infos:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(tid)]
        n = 1
        for d in dims:
            n *= d
        nbytes = n // block * size
        out[name] = (tid, tuple(reversed(dims)), buf[start + off:start + off + nbytes])
    return out


def validate_fails(artifact: str | os.PathLike[str], reference: str | os.PathLike[str] | None, *phrases: str,
                   extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """`bitconv validate --json --no-transformers` exits 3 and its verdict names every phrase; the
    report. (The numpy reference: the tensors are the judge, and transformers' start-up would
    dominate these tests.)"""
    args = ["validate", artifact, "--json", "--no-transformers", *extra]
    args += ["--reference", reference] if reference else []
    proc = run_cli(*args)
    assert proc.returncode == 3, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["result"]["passed"] is False
    for p in phrases:
        assert p in doc["result"]["verdict"], doc["result"]["verdict"]
    return doc["result"]
