"""`bitconv validate --runtime`: the runtime's own verdict. Correct artifacts pass in each runtime
(llama.cpp: Qwen q8_0 and a 1bitLLM-style tq2_0; onnxruntime: a Qwen int4 export through
onnxruntime-genai and, with genai hidden, through onnxruntime + tokenizers; transformers:
compressed-tensors and bitnet-packed hf2st folders); a GGUF whose merges were cut passes every check
bitconv runs itself and fails in llama.cpp (its tokens differ); a runtime that cannot read the
artifact (llama.cpp and i2_s) is one line, exit 2; `--json` is one object; a batch job can ask for it.
"""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

import bitconv
from cli_helpers import error_line, json_result, run_cli
from fixtures_onebit import make_onebit_checkpoint

from bitconv.errors import UsageError
from bitconv.validate import DEFAULT_PROMPT

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def qwen(qwen2_checkpoint: Path) -> Path:
    return qwen2_checkpoint


@pytest.fixture(scope="module")
def bitnet(bitnet_packed: Path) -> Path:
    return bitnet_packed


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vrt-out")


@pytest.fixture(scope="module")
def q8(qwen, out) -> Path:
    path = out / "qwen-q8_0.gguf"
    bitconv.convert(qwen, "gguf", "q8_0", path, manifest=False)
    return path


def _passes(r: bitconv.ValidationReport, runtime: str) -> None:
    assert r.passed, r.verdict
    rc = r.runtime
    assert rc is not None and rc.runtime == runtime and rc.ok, rc
    assert rc.tokens_match is True and rc.runtime_ids is None
    assert rc.positions == rc.tokens > 1  # every prompt position compared
    assert rc.cos >= rc.min_cos == r.thresholds[r.quant]
    assert f"{runtime}: tokenizer gives the reference's" in r.verdict


# --- llama.cpp ------------------------------------------------------------------------------------

def test_llamacpp_qwen_q8_0_passes_quietly(q8, qwen, capfd):
    r = bitconv.validate(q8, qwen, runtime="llama.cpp")
    _passes(r, "llama.cpp")
    assert r.runtime.reference == r.logits.reference == "transformers float32"
    assert r.runtime.via.startswith("llama-cpp-python")
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == "", captured  # llama.cpp's and transformers' logs stay inside


def test_llamacpp_onebit_tq2_0_passes(out):
    ckpt = make_onebit_checkpoint(out / "onebit")
    path = out / "onebit-tq2_0.gguf"
    bitconv.convert(ckpt, "gguf", "tq2_0", path, manifest=False)
    r = bitconv.validate(path, ckpt, runtime="llama.cpp")  # SentencePiece vocabulary, llama.cpp's TQ2_0 kernel
    _passes(r, "llama.cpp")
    assert "BitLinear" in r.runtime.reference  # 1bitLLM has no transformers class: the numpy BitLinear reference
    assert r.runtime.top1 == 1.0


def test_tokens_given_skip_the_tokenizer(q8, qwen):
    r = bitconv.validate(q8, qwen, tokens=[9707, 1879, 11, 419, 374], runtime="llama.cpp")
    assert r.passed and r.runtime.ok and r.runtime.tokens_match is None, r.verdict
    assert "--tokens" in r.runtime.message and r.runtime.positions == 5


# a GGUF file whose tokenizer lost merges: every tensor is right, the text tokenizes differently

def _rewrite_string_array(src: Path, dst: Path, key: str, keep) -> int:
    """Copy the GGUF file `src` to `dst` with the string array `key` filtered by `keep`; the tensor
    data is moved to the new aligned start (tensor offsets are relative to it). Returns how many
    strings were dropped."""
    buf = src.read_bytes()
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(at: int) -> tuple[bytes, int]:
        (n,) = struct.unpack_from("<Q", buf, at)
        return buf[at + 8:at + 8 + n], at + 8 + n

    def value(vtype: int, at: int) -> tuple[object, int]:
        if vtype in sizes:
            return struct.unpack_from({1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[sizes[vtype]], buf, at)[0], at + sizes[vtype]
        if vtype == 8:
            return string(at)
        sub, count = struct.unpack_from("<IQ", buf, at)
        at += 12
        items = []
        for _ in range(count):
            item, at = value(sub, at)
            items.append(item)
        return items, at

    span, strings, alignment = None, None, 32
    for _ in range(n_kv):
        start = pos
        name, pos = string(pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        v, pos = value(vtype, pos + 4)
        if name == key.encode():
            span, strings = (start, pos), v
        elif name == b"general.alignment":
            alignment = int(v)
    for _ in range(n_tensors):
        _, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        pos += 4 + 8 * n_dims + 4 + 8
    data_start = -(-pos // alignment) * alignment
    assert span is not None and isinstance(strings, list)
    kept = [s for s in strings if keep(s.decode("utf-8"))]
    kv = struct.pack("<Q", len(key)) + key.encode() + struct.pack("<IIQ", 9, 8, len(kept))
    kv += b"".join(struct.pack("<Q", len(s)) + s for s in kept)
    head = buf[:span[0]] + kv + buf[span[1]:pos]
    head += bytes(-len(head) % alignment)
    dst.write_bytes(head + buf[data_start:])
    return len(strings) - len(kept)


@pytest.fixture(scope="module")
def cut_merges(q8, qwen, out) -> Path:
    from tokenizers import Tokenizer

    words = set(Tokenizer.from_file(str(qwen / "tokenizer.json")).encode(DEFAULT_PROMPT).tokens)
    dst = out / "qwen-q8_0-cut-merges.gguf"
    dropped = _rewrite_string_array(q8, dst, "tokenizer.ggml.merges", lambda m: m.replace(" ", "", 1) not in words)
    assert dropped >= 5  # the merges that make " quick", " brown", " fox", …
    return dst


def test_cut_merges_pass_bitconvs_checks_and_fail_in_llamacpp(cut_merges, qwen):
    assert bitconv.validate(cut_merges, qwen).passed  # tensors, hidden states and logits all match

    proc = run_cli("validate", cut_merges, "--reference", qwen, "--runtime", "llama.cpp", "--json", "--no-transformers")
    assert proc.returncode == 3, proc.stderr[-2000:]
    doc = json_result(proc)  # exactly one JSON object on stdout, llama.cpp's logs nowhere
    assert doc["ok"] is False and proc.stderr == ""
    res = doc["result"]
    rt = res["runtime"]
    assert rt["runtime"] == "llama.cpp" and rt["ok"] is False and rt["tokens_match"] is False
    assert rt["runtime_ids"] != rt["reference_ids"] and len(rt["runtime_ids"]) > len(rt["reference_ids"])
    assert rt["cos"] >= rt["min_cos"]  # the weights are right: only the tokenizer is broken
    assert "llama.cpp: tokens differ from the reference tokenizer's" in res["verdict"]
    assert all(t["ok"] for t in res["tensors"]) and res["logits"]["ok"]


def test_a_file_llamacpp_cannot_load_fails(q8, qwen, tmp_path):
    data = bytearray(q8.read_bytes())
    at = data.index(b"gpt2", data.index(b"tokenizer.ggml.model"))
    data[at:at + 4] = b"gpt9"  # a tokenizer model llama.cpp does not know
    bad = tmp_path / "bad-tokenizer.gguf"
    bad.write_bytes(bytes(data))
    r = bitconv.validate(bad, qwen, runtime="llama.cpp", use_transformers=False)
    assert not r.passed and all(t.ok for t in r.tensors) and r.logits.ok
    assert not r.runtime.ok and r.runtime.message.startswith("cannot load the artifact: ")
    assert r.verdict.startswith("FAIL: llama.cpp: cannot load the artifact")


def test_cli_renders_the_runtime_section(q8, qwen):
    proc = run_cli("validate", q8, "--reference", qwen, "--runtime", "llama.cpp", "--no-transformers")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "runtime llama.cpp: llama-cpp-python" in proc.stdout and "prompt tokens" in proc.stdout
    assert "vs numpy forward of the HF weights" in proc.stdout
    assert proc.stderr == ""


# --- what a runtime cannot read: one line, exit 2 ---------------------------------------------------

def test_llamacpp_refuses_i2_s_naming_bitnet_cpp(bitnet, out):
    path = out / "bitnet-i2_s.gguf"
    bitconv.convert(bitnet, "gguf", "i2_s", path, manifest=False)
    proc = run_cli("validate", path, "--reference", bitnet, "--runtime", "llama.cpp")
    assert proc.returncode == 2 and proc.stdout == ""
    line = error_line(proc)
    assert "i2_s" in line and "bitnet.cpp" in line
    doc = json_result(run_cli("validate", path, "--reference", bitnet, "--runtime", "llama.cpp", "--json"))
    assert doc["error"]["type"] == "UsageError" and doc["error"]["exit_code"] == 2


def test_wrong_runtime_unknown_name_missing_package_or_reference(q8, qwen, monkeypatch):
    with pytest.raises(UsageError, match=r"--runtime onnxruntime reads ONNX exports; .* is a GGUF file: llama\.cpp"):
        bitconv.validate(q8, qwen, runtime="onnxruntime")
    with pytest.raises(UsageError, match=r"--runtime transformers reads safetensors checkpoints; .*runtime llama\.cpp"):
        bitconv.validate(q8, qwen, runtime="transformers")
    with pytest.raises(UsageError, match="expected one of llama.cpp, onnxruntime, transformers"):
        bitconv.validate(q8, qwen, runtime="vllm")
    with pytest.raises(UsageError, match="pass --reference"):
        bitconv.validate(q8, None, runtime="llama.cpp")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # not installed
    with pytest.raises(UsageError, match=r"llama_cpp package: pip install 'bitconv\[llamacpp\]'"):
        bitconv.validate(q8, qwen, runtime="llama.cpp")


# --- onnxruntime ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_int4(qwen, out) -> Path:
    pytest.importorskip("onnxruntime")
    path = out / "qwen-int4"
    bitconv.api.convert_onnx(qwen, "int4", path, manifest=False)
    return path


def test_onnxruntime_genai_passes(onnx_int4, qwen):
    pytest.importorskip("onnxruntime_genai")
    r = bitconv.validate(onnx_int4, qwen, runtime="onnxruntime")
    _passes(r, "onnxruntime")
    assert r.runtime.via.startswith("onnxruntime-genai") and "og.Generator" in r.runtime.via


def test_onnxruntime_without_genai_passes(onnx_int4, qwen, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # not installed: onnxruntime + tokenizers
    r = bitconv.validate(onnx_int4 / "model.onnx", qwen, runtime="onnxruntime")
    _passes(r, "onnxruntime")
    assert r.runtime.via.startswith("onnxruntime ") and "tokenizer.json" in r.runtime.via
    assert abs(r.runtime.cos - r.logits.cos) < 1e-6  # the same session the logits check runs


# --- transformers ---------------------------------------------------------------------------------

def test_transformers_compressed_tensors_passes(qwen, out):
    pytest.importorskip("compressed_tensors")
    path = out / "qwen-ct-int4"
    bitconv.api.convert_safetensors(qwen, "compressed-tensors", path, quant="int4", block_size=32, manifest=False)
    r = bitconv.validate(path, qwen, runtime="transformers")
    _passes(r, "transformers")
    assert "compressed-tensors" in r.runtime.via


def test_transformers_bitnet_packed_passes(bitnet, out):
    path = out / "bitnet-packed"
    bitconv.api.convert_safetensors(bitnet, "bitnet-packed", path, manifest=False)
    r = bitconv.validate(path, bitnet, runtime="transformers")
    _passes(r, "transformers")
    assert "BitLinear" in r.runtime.reference and r.runtime.cos > 0.99999


# --- batch ----------------------------------------------------------------------------------------

def test_batch_job_with_a_runtime(qwen, tmp_path):
    from bitconv.batch import load_jobs, run_batch

    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[[job]]\nsource = "{qwen}"\nformat = "gguf"\nquant = "q8_0"\noutput = "q.gguf"\n'
                    'validate = "llama.cpp"\n')
    report = run_batch(jobs)
    assert report.passed, report.to_dict()
    v = report.jobs[0].validation
    assert v["passed"] is True and v["runtime"]["runtime"] == "llama.cpp" and v["runtime"]["tokens_match"] is True
    json.dumps(report.to_dict())

    for value, phrase in (('"onnxruntime"', "'llama.cpp'"), ('"nope"', "expected true, false or the runtime")):
        jobs.write_text(f'[[job]]\nsource = "{qwen}"\nformat = "gguf"\noutput = "q.gguf"\nvalidate = {value}\n')
        with pytest.raises(UsageError, match=phrase):
            load_jobs(jobs)
