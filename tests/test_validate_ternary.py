"""`bitconv validate` judges ternary-trained checkpoints against the ternary model they are.

transformers loads BitNet master weights without a quantization_config as plain nn.Linear: their
float32 forward is the full-precision model, not the ternary model an i2_s file holds (cos 0.28 on
the tiny fixture). The reference must be the BitLinear one — transformers' own BitNet quantization
in its online mode for master weights, their own BitLinear for packed checkpoints, the numpy
BitLinear forward where transformers has no class — and the report says which ran.

Every ternary fixture form × every ternary output passes with default options (transformers
installed), and the same output with one corrupted block fails with exit 3. Each form's reference
logits are computed once (validate caches them per checkpoint and prompt).
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import bitconv
import fixtures_bitnet as fb
import turns
from cli_helpers import json_result, run_cli

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' BitNet quantization needs it

pytestmark = pytest.mark.slow

FORMS = {
    "master-bf16": dict(form="master", dtype="bf16", master_quant_config=False),
    "master-f32": dict(form="master", dtype="f32", master_quant_config=False),
    "packed-bitlinear": dict(form="packed", linear_class="bitlinear"),
    "packed-autobitlinear": dict(form="packed", linear_class="autobitlinear"),
}
GGUF_TERNARY = ("i2_s", "tl1", "tl2", "tq1_0", "tq2_0")
OUTPUTS = GGUF_TERNARY + ("onnx-int2", "bitnet-packed")
CORRUPTED = "blk.1.ffn_up.weight"  # the linear whose bytes are flipped; HF: model.layers.1.mlp.up_proj.weight
PROMPT_IDS = [128000, 791, 4062, 14198, 39935, 35308, 927]


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ternary-forms")
    return {name: fb.make_bitnet_checkpoint(root / name, **kw) for name, kw in FORMS.items()}


def convert(src: Path, output: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    if output in GGUF_TERNARY:
        return Path(bitconv.convert(src, "gguf", output, out_dir / f"{output}.gguf", manifest=False).output)
    if output == "onnx-int2":
        return Path(bitconv.convert(src, "onnx", "int2", out_dir / "onnx", manifest=False).output)
    return Path(bitconv.convert(src, "safetensors", out=out_dir / "st", format="bitnet-packed", manifest=False).output)


def ternary_bytes(artifact: Path) -> tuple[Path, int, int]:
    """(file, offset, length) of the stored codes of CORRUPTED in an artifact of any kind."""
    if artifact.is_file():  # GGUF: offsets are absolute in bitconv's summary
        t = next(t for t in bitconv.inspect(artifact).tensors if t.name == CORRUPTED)
        return artifact, t.offset, t.nbytes
    if (artifact / "model.onnx").is_file():
        from bitconv.formats.onnx.reader import OnnxArtifact

        art = OnnxArtifact(artifact)
        w = next(w for w in art.weights() if w.name == CORRUPTED and w.kind == "nbits")
        path, offset, length = art._external(art.inits[w.init])
        return path, offset, int(length or 0)
    f = artifact / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    begin, end = json.loads(raw[8:8 + n])["model.layers.1.mlp.up_proj.weight"]["data_offsets"]
    return f, 8 + n + begin, end - begin


def corrupt_one_block(artifact: Path, dst: Path) -> Path:
    """A copy with 8 bytes of CORRUPTED's codes inverted (every 2-bit code becomes another)."""
    if artifact.is_dir():
        shutil.copytree(artifact, dst)
    else:
        shutil.copy(artifact, dst)
        sidecar = artifact.with_name(artifact.stem + ".kernel_config.ini")  # tl1/tl2: their tiling
        if sidecar.is_file():
            shutil.copy(sidecar, dst.with_name(dst.stem + ".kernel_config.ini"))
    f, offset, length = ternary_bytes(artifact)
    target = dst / f.relative_to(artifact) if artifact.is_dir() else dst
    data = bytearray(target.read_bytes())
    mid = offset + length // 2
    for j in range(mid, mid + 8):
        data[j] ^= 0xFF
    target.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("output", OUTPUTS)
def test_every_form_passes_and_one_corrupted_block_fails(forms: dict[str, Path], output: str,
                                                         tmp_path: Path) -> None:
    made = {}
    # i2_s: every form; the other outputs take turns, two forms a run (tests/turns.py)
    names = list(forms) if output == "i2_s" else turns.share(list(forms), 2, offset=2 * OUTPUTS.index(output))
    name = "master-bf16" if output != "tl2" else "packed-bitlinear"  # the form whose copy is corrupted below
    for name_ in dict.fromkeys([*names, name]):
        src = forms[name_]
        out = convert(src, output, tmp_path / name_)
        r = bitconv.validate(out, src)  # default options: transformers is the judge where it runs
        assert r.passed, f"{name_} → {output}: {r.verdict}"
        assert r.logits is not None and "BitLinear reference" in r.logits.reference, r.logits
        assert r.logits.reference.startswith("transformers"), r.logits.reference
        if name_.startswith("master"):
            assert "online quantization of the master weights" in r.logits.reference
        made[name_] = out
    bad = corrupt_one_block(made[name], tmp_path / f"bad-{output}{'.gguf' if made[name].is_file() else ''}")
    if output == "i2_s":  # the CLI's exit code once; in-process for the rest (a process start reloads torch)
        proc = run_cli("validate", bad, "--reference", forms[name], "--json")
        assert proc.returncode == 3, (proc.stdout[-1500:], proc.stderr[-1500:])
        verdict = json_result(proc)["result"]["verdict"]
    else:
        r = bitconv.validate(bad, forms[name])
        assert not r.passed
        verdict = r.verdict
    assert "up_proj" in verdict or CORRUPTED in verdict, verdict


def test_online_reference_is_the_bitlinear_reference(forms: dict[str, Path]) -> None:
    """transformers' online AutoBitLinear on master weights computes DESIGN.md's BitLinear reference
    (absmean ternary weights, per-token int8 activations): the same logits as the independent
    BitLinear forward of the tests and as bitconv's numpy forward — and not the full-precision model."""
    from bitconv.validate.logits import reference_forward, transformers_logits

    src = forms["master-bf16"]
    run = transformers_logits(src, PROMPT_IDS)
    assert run is not None and run.ternary and "AutoBitLinear" in run.label
    independent = fb.bitnet_logits(src, PROMPT_IDS, reference="bitlinear")
    _, plan = bitconv.plan_gguf(src, "i2_s")
    ours = reference_forward(src, plan, PROMPT_IDS, True).logits[-1]

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(run.logits[-1], independent) > 0.99999
    assert cos(run.logits[-1], ours) > 0.9999
    full_precision = fb.hf_bitnet_logits(src, PROMPT_IDS)  # what the old reference ran
    assert cos(full_precision, independent) < 0.99


def test_no_transformers_class_numpy_bitlinear_says_so(tmp_path: Path) -> None:
    """1bitLLM-style checkpoints have no transformers class: the numpy BitLinear forward judges."""
    from fixtures_onebit import make_onebit_checkpoint

    src = make_onebit_checkpoint(tmp_path / "onebit")
    out = Path(bitconv.convert(src, "gguf", "tq2_0", tmp_path / "o.gguf", manifest=False).output)
    r = bitconv.validate(out, src)
    assert r.passed, r.verdict
    assert r.logits.reference.startswith("numpy forward") and "BitLinear reference" in r.logits.reference


def test_dependencies_print_nothing(forms: dict[str, Path], tmp_path: Path) -> None:
    """transformers' 'Loading weights' bar and its warnings never reach bitconv's output; with --json
    stdout is exactly one JSON object; --debug lets them through."""
    src = forms["master-bf16"]
    out = convert(src, "i2_s", tmp_path)
    proc = run_cli("validate", out, "--reference", src, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json_result(proc)["result"]["passed"]
    assert proc.stderr == "", proc.stderr[-2000:]
    proc = run_cli("validate", out, "--reference", src, "--debug")
    assert proc.returncode == 0
    assert "Loading weights" in proc.stdout + proc.stderr  # the test would see the bar if it leaked


def test_quiet_helper_restores_streams(capfd: pytest.CaptureFixture[str]) -> None:
    """quiet_dependencies swallows fd-level writes and gives the descriptors back."""
    import os

    from bitconv.quiet import quiet_dependencies

    with quiet_dependencies():
        os.write(2, b"from C\n")
        print("from Python")
    os.write(2, b"after\n")
    got = capfd.readouterr()
    assert "from C" not in got.err and "from Python" not in got.out and "after" in got.err

