"""The runtimes `bitconv validate --runtime` asks for their verdict: each loads the artifact as users
run it, tokenizes text with the artifact's own vocabulary and returns the logits of a prompt.

One small class per runtime in `RUNTIMES` (name → driver): `kind` is the artifact kind it reads,
`refusal()` names what it cannot read (and the runtime that can) before anything runs, `open()` loads
the artifact into a `Session` (`tokenize(text)`, `logits(ids)` → [positions, vocab] float32).

* llama.cpp (llama-cpp-python): GGUF files, all prompt positions (`logits_all`). bitnet.cpp's own
  types (i2_s, tl1, tl2) and architectures (bitnet-25) are refused: only bitnet.cpp reads them.
* onnxruntime: ONNX export folders, through onnxruntime-genai when it is installed (og.Model reads
  genai_config.json, og.Tokenizer the folder's tokenizer files, og.Generator runs the prompt), else
  onnxruntime on model.onnx with the folder's tokenizer.json through the `tokenizers` package.
* transformers: safetensors checkpoint folders (AutoTokenizer + AutoModelForCausalLM from the
  artifact folder; transformers reads compressed-tensors, bitsandbytes and bitnet-packed itself).

Every call into a runtime runs inside `quiet_dependencies()` with the library's own verbosity switch
off, so nothing it prints reaches bitconv's stdout/stderr.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from ..errors import UsageError
from ..quiet import dependency_output_shown, quiet_dependencies

#: which runtime reads each artifact kind (for the message when another one is asked)
READER = {"gguf": "llama.cpp", "onnx": "onnxruntime", "safetensors": "transformers"}
KIND_WORDS = {"gguf": "a GGUF file", "onnx": "an ONNX export", "safetensors": "a safetensors checkpoint"}
KIND_PLURAL = {"gguf": "GGUF files", "onnx": "ONNX exports", "safetensors": "safetensors checkpoints"}
#: GGUF tensor types and architectures only bitnet.cpp reads
BITNET_CPP_TYPES = ("I2_S", "TL1", "TL2")
BITNET_CPP_ARCHS = ("bitnet-25",)


class Session:
    """An artifact loaded in a runtime."""

    via: str = ""

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def logits(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Runtime:
    name: ClassVar[str]
    kind: ClassVar[str]  # the artifact kind it reads
    module: ClassVar[str]  # the package it needs, and how to install it
    install: ClassVar[str]

    def refusal(self, path: Path) -> str | None:
        """Why this runtime cannot read `path` (naming the runtime that can), or None."""
        return None

    def available(self) -> str | None:
        """None when the runtime's package imports, else the one-line message saying what to install."""
        try:
            __import__(self.module)
        except ImportError:
            return f"--runtime {self.name} needs the {self.module} package: {self.install}"
        return None

    @contextlib.contextmanager
    def open(self, path: Path, n_tokens: int) -> Iterator[Session]:
        session = self._open(path, n_tokens)
        try:
            yield session
        finally:
            with quiet_dependencies():
                session.close()

    def _open(self, path: Path, n_tokens: int) -> Session:
        raise NotImplementedError


RUNTIMES: dict[str, Runtime] = {}


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    RUNTIMES[cls.name] = cls()
    return cls


def get_runtime(name: str, artifact: Path, kind: str | None) -> Runtime:
    """The driver for `name`, checked against the artifact before any validation runs: an unknown
    name, an artifact it cannot read or a missing package is a one-line UsageError."""
    rt = RUNTIMES.get(name.strip().lower())
    if rt is None:
        raise UsageError(f"--runtime {name!r}: expected one of {', '.join(RUNTIMES)}")
    if kind != rt.kind:
        reader = READER.get(kind or "")
        what = KIND_WORDS.get(kind or "", "not an artifact bitconv knows")
        hint = f": {reader} reads it (--runtime {reader})" if reader else ""
        raise UsageError(f"--runtime {rt.name} reads {KIND_PLURAL[rt.kind]}; {artifact} is {what}{hint}")
    problem = rt.refusal(artifact) or rt.available()
    if problem:
        raise UsageError(problem)
    return rt


# --- llama.cpp ------------------------------------------------------------------------------------

class _LlamaSession(Session):
    def __init__(self, llm: Any, version: str) -> None:
        self.llm = llm
        self.via = f"llama-cpp-python {version} (all prompt positions)"

    def tokenize(self, text: str) -> list[int]:
        with quiet_dependencies():
            return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def logits(self, ids: list[int]) -> np.ndarray:
        with quiet_dependencies():
            self.llm.reset()
            self.llm.eval(ids)
            return np.array(self.llm.scores[:len(ids)], dtype=np.float32)

    def close(self) -> None:
        self.llm.close()


@contextlib.contextmanager
def plain_cpu_buffers() -> Iterator[None]:
    """Load without ggml's extra CPU buffer types (AMX / repacked weights; llama.cpp's
    --no-extra-bufts): the AMX kernels crash on some machines, and the verdict concerns the file,
    not a repacked copy. llama-cpp-python's Llama has no argument for it: its default parameters
    are adjusted for the load."""
    import llama_cpp.llama_cpp as lc

    default = lc.llama_model_default_params

    def params() -> Any:
        p = default()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    lc.llama_model_default_params = params
    try:
        yield
    finally:
        lc.llama_model_default_params = default


@register_runtime
class LlamaCpp(Runtime):
    name = "llama.cpp"
    kind = "gguf"
    module = "llama_cpp"
    install = "pip install 'bitconv[llamacpp]'"

    def refusal(self, path: Path) -> str | None:
        from ..errors import ArtifactError
        from ..convert.gguf_header import read_gguf_summary

        try:
            summary = read_gguf_summary(path)
        except ArtifactError:
            return None  # validate reports the unreadable file
        types = sorted({t.type_name for t in summary.tensors if t.type_name in BITNET_CPP_TYPES})
        if types:
            return (f"--runtime llama.cpp: {path.name} holds {'/'.join(t.lower() for t in types)} tensors, which "
                    "only bitnet.cpp reads (mainline llama.cpp has no such types); run it in bitnet.cpp, or "
                    "validate without --runtime")
        arch = summary.metadata.get("general.architecture")
        if arch in BITNET_CPP_ARCHS:
            return (f"--runtime llama.cpp: architecture {arch} (BitNet b1.58 2B4T-style, ReLU²) is read only by "
                    "bitnet.cpp (mainline llama.cpp has no such graph); run it in bitnet.cpp, or validate without "
                    "--runtime")
        return None

    def _open(self, path: Path, n_tokens: int) -> Session:
        import llama_cpp

        n_ctx = max(64, n_tokens + 1)
        threads = max(1, min(os.cpu_count() or 1, 8))
        with quiet_dependencies(), plain_cpu_buffers():
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                  n_threads=threads, logits_all=True, verbose=dependency_output_shown())
        return _LlamaSession(llm, llama_cpp.__version__)


# --- onnxruntime ----------------------------------------------------------------------------------

class _GenaiSession(Session):
    def __init__(self, folder: Path) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(folder))
        self.tokenizer = og.Tokenizer(self.model)
        self.via = f"onnxruntime-genai {og.__version__} (og.Model, og.Tokenizer, og.Generator; all prompt positions)"

    def tokenize(self, text: str) -> list[int]:
        with quiet_dependencies():
            ids = [int(t) for t in self.tokenizer.encode(text)]
            added = [int(t) for t in self.tokenizer.encode("")]  # what it adds to every text (a BOS)
        return ids[len(added):] if added and ids[:len(added)] == added else ids

    def logits(self, ids: list[int]) -> np.ndarray:
        og = self.og
        with quiet_dependencies():
            params = og.GeneratorParams(self.model)
            params.set_search_options(max_length=len(ids) + 1)
            gen = og.Generator(self.model, params)
            gen.append_tokens(np.array([ids], dtype=np.int32))
            out = np.asarray(gen.get_output("logits"), dtype=np.float32)
        rows = out.reshape(-1, out.shape[-1])
        return rows[-len(ids):]  # the prompt step gives every position; an older genai only the last


class _OrtSession(Session):
    def __init__(self, folder: Path, model_path: Path) -> None:
        import onnxruntime
        import tokenizers

        self.folder, self.model_path = folder, model_path
        self.via = (f"onnxruntime {onnxruntime.__version__} + tokenizers {tokenizers.__version__} (onnxruntime-genai "
                    "not installed: model.onnx with the folder's tokenizer.json; all prompt positions)")

    def tokenize(self, text: str) -> list[int]:
        from tokenizers import Tokenizer

        tj = self.folder / "tokenizer.json"
        if not tj.is_file():
            raise RuntimeError(f"{self.folder} has no tokenizer.json")
        with quiet_dependencies():
            return list(Tokenizer.from_file(str(tj)).encode(text, add_special_tokens=False).ids)

    def logits(self, ids: list[int]) -> np.ndarray:
        from .onnx import onnx_logits

        with quiet_dependencies():
            return onnx_logits(self.model_path, ids)[0]


@register_runtime
class OnnxRuntime(Runtime):
    name = "onnxruntime"
    kind = "onnx"
    module = "onnxruntime"
    install = "pip install 'bitconv[onnx]' (and onnxruntime-genai for its generator)"

    def _open(self, path: Path, n_tokens: int) -> Session:
        model_path = path / "model.onnx" if path.is_dir() else path
        try:
            import onnxruntime_genai  # noqa: F401
        except ImportError:
            return _OrtSession(model_path.parent, model_path)
        with quiet_dependencies():
            return _GenaiSession(model_path.parent)


# --- transformers ---------------------------------------------------------------------------------

class _TransformersSession(Session):
    def __init__(self, folder: Path) -> None:
        import torch
        import transformers

        self.torch = torch
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        method = (cfg.get("quantization_config") or {}).get("quant_method")
        # bitsandbytes weights load on the CPU in their own dtype; every other layout in float32
        kwargs: dict[str, Any] = {"device_map": "cpu"} if method == "bitsandbytes" else {"dtype": torch.float32}
        with quiet_dependencies(), _no_dynamo(torch):
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                str(folder), attn_implementation="eager", **kwargs).eval()
        self.via = (f"transformers {transformers.__version__}" + (f" ({method})" if method else "")
                    + ": AutoTokenizer + AutoModelForCausalLM from the artifact folder; all prompt positions")

    def tokenize(self, text: str) -> list[int]:
        with quiet_dependencies():
            return list(self.tokenizer.encode(text, add_special_tokens=False))

    def logits(self, ids: list[int]) -> np.ndarray:
        torch = self.torch
        with quiet_dependencies(), _no_dynamo(torch), torch.no_grad():
            out = self.model(torch.tensor([ids], dtype=torch.long)).logits[0]
        return out.to(torch.float32).numpy()


@contextlib.contextmanager
def _no_dynamo(torch: Any) -> Iterator[None]:
    import torch._dynamo

    prev = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    try:
        yield
    finally:
        torch._dynamo.config.disable = prev


@register_runtime
class Transformers(Runtime):
    name = "transformers"
    kind = "safetensors"
    module = "transformers"
    install = "pip install 'bitconv[torch]'"

    def available(self) -> str | None:
        for module in ("torch", "transformers"):
            try:
                __import__(module)
            except ImportError:
                return f"--runtime transformers needs the {module} package: {self.install}"
        return None

    def _open(self, path: Path, n_tokens: int) -> Session:
        folder = path if path.is_dir() else path.parent
        try:
            return _TransformersSession(folder)
        except ImportError as e:  # compressed-tensors, bitsandbytes, accelerate: transformers names it
            raise UsageError(f"--runtime transformers cannot load {folder.name}: "
                             + (str(e).strip().splitlines() or [type(e).__name__])[0]) from None
