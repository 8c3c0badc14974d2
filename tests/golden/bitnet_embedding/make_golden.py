"""Regenerate golden.json (Qwen3 backbone) and golden-gemma3.json (Gemma3 backbone): bitnet.cpp's own
converter, `utils/convert-bitnet-embedding-to-gguf.py`, run on the tiny BitNet embedding fixtures
(tests/fixtures_embedding.py, tests/fixtures_embedding_gemma3.py) for f32, f16 and i2_s.

Not run in CI (it needs the upstream script and a gguf-py that names I2_S). The files are tens of MB
(the real Qwen vocabulary), so golden.json keeps their digests: sha256 and size, every metadata key
in order (scalars as values, arrays as sha256), every tensor's type, dims, offset and sha256.

    cd <repo> && .venv/bin/python tests/golden/bitnet_embedding/make_golden.py \
        --bitnet-git-dir /work/.mirror/microsoft+BitNet/repo --work /work/embed-tools/golden

The upstream script imports `gguf`; pip's gguf-py (0.19) has no I2_S, so this script copies the
installed package into --work and adds the two lines bitnet.cpp's fork has (`I2_S = 36`, block 1,
type size 1: add_tensor keeps the logical shape of the packed bytes) — on PYTHONPATH for the
converter's process only. Everything else is this venv's (numpy, torch, safetensors, transformers).
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/

import fixtures_embedding  # noqa: E402
import fixtures_embedding_gemma3  # noqa: E402

SCRIPT = "utils/convert-bitnet-embedding-to-gguf.py"
#: golden file → (fixture factory, its arguments)
FIXTURES = {
    "golden.json": (fixtures_embedding.make_embedding_checkpoint,
                    {"name": "bitnet-embedding-tiny", "dtype": "bf16", "seed": 0}),
    "golden-gemma3.json": (fixtures_embedding_gemma3.make_gemma3_embedding_checkpoint,
                           {"name": "bitnet-embedding-gemma3-tiny", "dtype": "bf16", "seed": 0}),
}
OUTTYPES = ("f32", "f16", "i2_s")


def patched_gguf(work: Path) -> Path:
    import gguf

    dest = work / "gguf-patched"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(Path(gguf.__file__).parent, dest / "gguf")
    constants = dest / "gguf" / "constants.py"
    text = constants.read_text()
    for old, new in (("    MXFP4   = 39\n", "    I2_S    = 36\n    MXFP4   = 39\n"),
                     ("    GGMLQuantizationType.MXFP4:", "    GGMLQuantizationType.I2_S:    (1, 1),\n"
                                                       "    GGMLQuantizationType.MXFP4:")):
        if old not in text:
            raise SystemExit(f"gguf {gguf.__version__}: cannot patch {constants} (no {old.strip()!r})")
        text = text.replace(old, new, 1)
    constants.write_text(text)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bitnet-git-dir", required=True, type=Path, help="a microsoft/BitNet git dir (bare mirror)")
    ap.add_argument("--commit", default="HEAD")
    ap.add_argument("--work", required=True, type=Path, help="scratch folder outside the repo")
    ap.add_argument("--only", choices=sorted(FIXTURES), help="regenerate this golden file only")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", f"--git-dir={args.bitnet_git_dir}", "rev-parse", args.commit], check=True,
                            capture_output=True, text=True).stdout.strip()
    script = work / "convert-bitnet-embedding-to-gguf.py"
    script.write_bytes(subprocess.run(["git", f"--git-dir={args.bitnet_git_dir}", "show", f"{commit}:{SCRIPT}"],
                                      check=True, capture_output=True).stdout)
    gguf_dir = patched_gguf(work)
    for golden_name, (factory, fixture) in FIXTURES.items():
        if args.only in (None, golden_name):
            make_one(golden_name, factory, fixture, work, script, gguf_dir, commit)


def make_one(golden_name: str, factory: Any, fixture: dict[str, Any], work: Path, script: Path, gguf_dir: Path,
             commit: str) -> None:
    ckpt = work / fixture["name"]
    shutil.rmtree(ckpt, ignore_errors=True)
    factory(ckpt, dtype=fixture["dtype"], seed=fixture["seed"])
    files = {}
    for outtype in OUTTYPES:
        out = work / f"upstream-{outtype}.gguf"
        subprocess.run([sys.executable, str(script), str(ckpt), "--outtype", outtype, "--outfile", str(out)],
                       check=True, env={"PYTHONPATH": str(gguf_dir), "PATH": "/usr/bin:/bin"}, cwd=work,
                       capture_output=True)
        files[outtype] = fixtures_embedding.gguf_digest(out)
        out.unlink()
    golden = {
        "made_by": {"repo": "microsoft/BitNet", "commit": commit, "script": SCRIPT,
                    "gguf": md.version("gguf") + " + I2_S = 36 (1, 1)",
                    **{p: md.version(p) for p in ("numpy", "torch", "safetensors", "transformers", "tokenizers")}},
        "fixture": {**fixture, "inputs": fixtures_embedding.checkpoint_digest(ckpt)},
        "files": files,
    }
    (HERE / golden_name).write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {HERE / golden_name} (upstream {commit[:7]})")


if __name__ == "__main__":
    main()
