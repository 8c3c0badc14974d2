"""`--runtime`: the verdict of the runtime itself, as its own section of the report.

The runtime (runtimes.RUNTIMES) loads the artifact and tokenizes the prompt with the artifact's own
vocabulary: those ids must equal the reference tokenizer's (`logits.prompt_ids`), so a tokenizer
export defect fails here even when every tensor matches. It then runs the reference's ids; its
logits (every prompt position it gives, else the last) are compared with the same reference the
logits check uses (`logits.reference_logits`: transformers float32, else the numpy forward; ternary
models: the BitLinear reference), held to the same threshold (that of the artifact's quant type).

Each validator calls `RuntimeJudge.check` where it knows the model the artifact holds (ternary or
not) and its numpy-forward fallback; the dispatcher records a "not run" section when it could not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BitconvError, UsageError
from .logits import logits_check, prompt_ids, reference_forward, reference_logits
from .report import DEFAULT_PROMPT, RuntimeCheck, ValidationReport
from .runtimes import Runtime, get_runtime

#: ids shown on each side of a tokenizer mismatch
_SHOW = 12


class RuntimeJudge:
    """One --runtime request for one artifact: checked before validation starts (get_runtime), run
    by the validator once the reference is known."""

    def __init__(self, runtime: str, artifact: str | Path, kind: str | None, prompt: str | None,
                 tokens: list[int] | None) -> None:
        self.artifact = Path(artifact)
        self.runtime: Runtime = get_runtime(runtime, self.artifact, kind)
        self.text = None if tokens else (prompt or DEFAULT_PROMPT)
        self.prompt, self.tokens = prompt, tokens

    def refuse(self, report: ValidationReport, why: str) -> None:
        """The runtime cannot run this model at all: a failed runtime section that says why."""
        report.runtime = RuntimeCheck(self.runtime.name, "", False, why)

    def check(self, report: ValidationReport, reference: Path, ternary: bool,
              fallback: Callable[[list[int]], np.ndarray | None], use_transformers: bool) -> None:
        """Fill report.runtime: the runtime's tokens and logits against the reference's."""
        ids = prompt_ids(reference, self.prompt, self.tokens)
        need = report.thresholds.get(report.quant, 0.0)
        rc = RuntimeCheck(self.runtime.name, "", False, "", tokens=len(ids), min_cos=need)
        report.runtime = rc
        stage = "cannot load the artifact"
        try:
            with self.runtime.open(self.artifact, len(ids)) as session:
                rc.via = session.via
                if self.text is not None:
                    stage = "cannot tokenize the prompt"
                    got_ids = session.tokenize(self.text)
                    rc.tokens_match = got_ids == ids
                    if not rc.tokens_match:
                        rc.runtime_ids, rc.reference_ids = got_ids, list(ids)
                stage = "cannot run the prompt"
                got = session.logits(ids)
        except UsageError:
            raise
        except Exception as e:  # the runtime's own exception types: the artifact does not load or run
            rc.message = f"{stage}: {_one_line(e)} (BITCONV_DEBUG=1 shows the runtime's own log)"
            return
        parts = [_token_mismatch(rc)] if rc.tokens_match is False else []
        if got.ndim != 2 or got.shape[0] == 0:
            rc.message = "; ".join(parts + [f"the runtime gave no logits (shape {list(got.shape)})"])
            return
        target, source = reference_logits(reference, ids, (len(ids), got.shape[-1]), use_transformers, ternary,
                                          lambda: fallback(ids))
        rc.reference = source
        if target is None:
            rc.ok = rc.tokens_match is not False
            rc.message = "; ".join((parts or [_tokens_word(rc)]) + ["logits not compared: no reference forward "
                                                                    f"for {report.architecture}"])
            return
        if target.shape[-1] != got.shape[-1]:
            rc.message = "; ".join(parts + [f"{got.shape[-1]} logits per position where the reference has "
                                            f"{target.shape[-1]}"])
            return
        rows = min(got.shape[0], len(ids))
        lc = logits_check(got[-rows:], target[-rows:], source, len(ids), need)
        rc.positions, rc.cos, rc.kl, rc.top1 = rows, lc.cos, lc.kl, lc.top1
        rc.ok = lc.ok and rc.tokens_match is not False
        where = "every prompt position" if rows == len(ids) else "the last position"
        if lc.ok:
            logits_part = f"logits cos {lc.cos:.6f} ≥ {need} over {where}, top-1 {lc.top1:.0%}, KL {lc.kl:.2e}"
        else:
            logits_part = f"logits cos {lc.cos:.6f} < {need} ({report.quant}) over {where}"
        rc.message = "; ".join((parts or [_tokens_word(rc)]) + [logits_part])

    def not_run(self, report: ValidationReport) -> None:
        """The validator stopped before the reference was known (unreadable artifact or reference)."""
        failed = next((c.name for c in report.checks if not c.ok), None)
        why = f"see the failed {failed!r} check" if failed else "the reference could not be compared"
        report.runtime = RuntimeCheck(self.runtime.name, "", False, f"not run ({why})")


def forward_fallback(reference: Path, plan: Any, ternary: bool, arch: str) -> Callable[[list[int]], np.ndarray | None]:
    """The numpy reference forward's logits as the fallback reference (cached: the logits check has
    usually run it already), None for an architecture it does not run."""
    from ..forward import SUPPORTED_ARCHS

    def run(ids: list[int]) -> np.ndarray | None:
        if arch not in SUPPORTED_ARCHS:
            return None
        try:
            return reference_forward(reference, plan, ids, ternary).logits
        except BitconvError:
            return None

    return run


def _tokens_word(rc: RuntimeCheck) -> str:
    if rc.tokens_match is None:
        return "ids given (--tokens): the runtime's tokenizer not checked"
    return f"tokenizer gives the reference's {rc.tokens} ids"


def _token_mismatch(rc: RuntimeCheck) -> str:
    a, b = rc.runtime_ids or [], rc.reference_ids or []
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, at - 2)
    return (f"tokens differ from the reference tokenizer's at position {at}: the runtime gives {len(a)} ids "
            f"{_ids(a, lo)}, the reference {len(b)} ids {_ids(b, lo)} (the artifact's vocabulary or merges do "
            "not tokenize as the checkpoint's tokenizer does)")


def _ids(ids: list[int], lo: int) -> str:
    part = ids[lo:lo + _SHOW]
    return ("[…" if lo else "[") + ", ".join(map(str, part)) + ("…]" if lo + _SHOW < len(ids) else "]")


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
