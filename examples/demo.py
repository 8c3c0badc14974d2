"""`make demo`: the headline flows on tiny checkpoints built on the spot, offline.

1. A BitNet b1.58 2B-4T-style checkpoint (ReLU², GGUF arch `bitnet-25`, bf16 master weights as the
   -bf16 hub repo publishes them) → i2_s for bitnet.cpp, validated against the checkpoint.
2. A 1bitLLM-style checkpoint (SiLU) → tq2_0 for llama.cpp, validated — in llama.cpp itself
   (`--runtime llama.cpp`) when llama-cpp-python is installed. (Mainline llama.cpp refuses ReLU²
   BitNet models, which is why flow 1 targets bitnet.cpp.)
3. A Qwen2 checkpoint → q8_0 for llama.cpp / Ollama, inspected and validated.

Runs the real `bitconv` commands a user would type, so what it prints is what they will see. The
checkpoints have random weights and real tokenizers (the same offline factories the tests use).
"""
from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def run(*args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("bitconv")), *args]
    print(f"\n$ bitconv {shlex.join(args)}", flush=True)
    subprocess.run(cmd, check=True)


def build(path: Path, what: str, make) -> Path:  # type: ignore[no-untyped-def]
    if not (path / "config.json").is_file():
        from bitconv.quiet import quiet_dependencies

        print(f"building {what} in {path}", flush=True)
        with quiet_dependencies():  # transformers' save_pretrained bars
            make(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo-out", help="folder for the example checkpoints and artifacts")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    start = time.monotonic()
    made: list[tuple[str, Path]] = []

    import fixtures
    import fixtures_bitnet
    import fixtures_onebit

    print("== 1. BitNet b1.58 (2B-4T style, ReLU²) → i2_s for bitnet.cpp ==")
    bitnet = build(out / "bitnet-b1.58-tiny", "a tiny BitNet b1.58 master checkpoint (bf16, Llama-3 tokenizer)",
                   lambda p: fixtures_bitnet.make_bitnet_checkpoint(p, "master", master_quant_config=False))
    i2s = out / "bitnet-b1.58-tiny-i2_s.gguf"
    run("hf2gguf", str(bitnet), "--quant", "i2_s", "-o", str(i2s), "--force")
    run("validate", str(i2s), "--reference", str(bitnet))
    made.append(("bitnet.cpp (i2_s)", i2s))

    print("\n== 2. 1bitLLM-style ternary model (SiLU) → tq2_0 for llama.cpp ==")
    onebit = build(out / "bitnet-1bitllm-tiny", "a tiny 1bitLLM-style checkpoint (SentencePiece tokenizer)",
                   lambda p: fixtures_onebit.make_onebit_checkpoint(p))
    tq2 = out / "bitnet-1bitllm-tiny-tq2_0.gguf"
    run("hf2gguf", str(onebit), "--target", "llama.cpp", "-o", str(tq2), "--force")
    if importlib.util.find_spec("llama_cpp") is not None:
        run("validate", str(tq2), "--reference", str(onebit), "--runtime", "llama.cpp")
    else:
        run("validate", str(tq2), "--reference", str(onebit))
        print("(install llama-cpp-python to have llama.cpp itself judge the file: --runtime llama.cpp)")
    made.append(("llama.cpp (tq2_0)", tq2))

    print("\n== 3. Qwen2 → q8_0 for llama.cpp / Ollama ==")
    qwen = build(out / "qwen2-tiny", "a tiny Qwen2 checkpoint (real Qwen tokenizer)",
                 lambda p: fixtures.make_checkpoint(p, arch="qwen2", dtype="bf16", hidden=128, layers=2))
    run("hf2gguf", str(qwen), "--quant", "q8_0", "-o", f"{out}/", "--force")
    q8 = out / "qwen2-tiny-q8_0.gguf"
    run("inspect", str(q8))
    run("validate", str(q8), "--reference", str(qwen))
    made.append(("llama.cpp / Ollama (q8_0)", q8))

    print(f"\nmade in {time.monotonic() - start:.0f} s:")
    for runtime, path in made:
        print(f"  {runtime:28} {path}  (+ {path.name}.manifest.json)")


if __name__ == "__main__":
    main()
