"""`make demo`: build a small example Qwen2 checkpoint offline, convert it, inspect it, validate it.

Runs the real `bitconv` commands a user would type, so what it prints is what they will see.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def run(*args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("bitconv")), *args]
    print(f"\n$ bitconv {shlex.join(args)}", flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo-out", help="folder for the example checkpoint and artifacts")
    ap.add_argument("--quant", default="q8_0")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    ckpt = out / "qwen2-tiny"
    if not (ckpt / "config.json").is_file():
        import fixtures  # the same offline factory the tests use: real Qwen tokenizer, random weights

        print(f"building an example checkpoint (tiny random Qwen2, real Qwen tokenizer) in {ckpt}", flush=True)
        fixtures.make_checkpoint(ckpt, arch="qwen2", dtype="bf16", hidden=128, layers=2)
    run("hf2gguf", str(ckpt), "--quant", args.quant, "-o", f"{out}/", "--force")
    artifact = out / f"{ckpt.name}-{args.quant}.gguf"
    run("inspect", str(artifact))
    run("validate", str(artifact), "--reference", str(ckpt))
    print(f"\nartifact: {artifact}\nmanifest: {artifact}.manifest.json")


if __name__ == "__main__":
    main()
