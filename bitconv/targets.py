"""Hardware-target presets: a name → the artifact format and the quant type a runtime wants.

Data, not code: one table, used by the CLI (`--target`, `bitconv targets`) and the Python API. An
explicit quant type always overrides the target's default.
"""
from __future__ import annotations

from dataclasses import dataclass

from .convert.arch.base import ArchMapping
from .errors import UsageError


@dataclass(frozen=True)
class Target:
    name: str
    format: str
    runtime: str
    description: str
    ternary_quant: str | None  # default for ternary-trained (BitNet b1.58) models
    other_quant: str | None  # default for every other model
    lut_quant: str | None = None  # with --lut
    smallest_quant: str | None = None  # with --smallest
    #: activations a runtime's graph for this target can run (None: any)
    activations: tuple[str, ...] | None = None

    def check(self, mapping: ArchMapping) -> None:
        """Refuse, in one line, an architecture this target's runtime cannot run."""
        if (why := mapping.refused_targets.get(self.name)) is not None:
            raise UsageError(f"target {self.name}: {why}")

    def quant_for(self, mapping: ArchMapping, *, lut: bool = False, smallest: bool = False) -> str:
        self.check(mapping)
        if mapping.ternary_model:
            act = str(mapping.config.get("hidden_act", "silu"))
            if self.activations is not None and act not in self.activations:
                raise UsageError(
                    f"target {self.name}: {self.runtime}'s BitNet graph applies {'/'.join(self.activations)} "
                    f"and this model uses {act}: it would load and give wrong logits; use --target bitnet-x86 (i2_s)")
            quant = (self.lut_quant if lut else None) or (self.smallest_quant if smallest else None) \
                or self.ternary_quant
        else:
            quant = self.other_quant
        if quant is None:
            kind = "ternary" if mapping.ternary_model else "non-ternary"
            raise UsageError(f"target {self.name} ({self.runtime}) has no preset for {kind} models")
        return quant


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("bitnet-x86", "gguf", "bitnet.cpp (x86)", "ternary models for bitnet.cpp on x86: i2_s (tl2 with --lut)",
           ternary_quant="i2_s", other_quant=None, lut_quant="tl2"),
    Target("bitnet-arm", "gguf", "bitnet.cpp (ARM)",
           "ternary models for bitnet.cpp on ARM: tl1 (its i2_s expects another block size)",
           ternary_quant="tl1", other_quant=None),
    Target("llama.cpp", "gguf", "llama.cpp / Ollama",
           "mainline llama.cpp and Ollama: tq2_0 for ternary models (tq1_0 with --smallest), q4_0 otherwise",
           ternary_quant="tq2_0", other_quant="q4_0", smallest_quant="tq1_0", activations=("silu",)),
    Target("onnx-cpu", "onnx", "ONNX Runtime (CPU)",
           "ONNX Runtime CPU EP (MatMulNBits, accuracy_level 4): int2 for ternary models, int4 otherwise",
           ternary_quant="int2", other_quant="int4"),
)}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r}; known: {', '.join(TARGETS)}") from None
