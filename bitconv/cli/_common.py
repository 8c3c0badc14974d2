"""What every `bitconv` command shares: the click group, the consoles, the `command` decorator
(--json / --debug and the one error policy), JSON output and byte formatting."""
from __future__ import annotations

import functools
import json
import sys
import traceback
import warnings
from typing import Any, Callable

import click
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..errors import BitconvError
from ..formats.atomic import interrupted_message
from ..quiet import show_dependency_output

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n} B"


def _emit_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, default=str))


def command(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Shared options and the one error policy: a BitconvError is one line and its exit code."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
        @click.option("--debug", is_flag=True,
                      help="Show tracebacks on errors, and dependencies' own output (progress bars, warnings, logs).")
        @functools.wraps(fn)
        def wrapper(as_json: bool, debug: bool, **kwargs: Any) -> None:
            exit_code = 0
            show_dependency_output(debug)
            if not debug:  # a dependency's warning is not bitconv's output (with --json: not one JSON object)
                warnings.simplefilter("ignore")
            try:
                result, render, *rest = fn(as_json=as_json, **kwargs)
                exit_code = rest[0] if rest else 0
            except BitconvError as e:
                _fail(name, as_json, debug, type(e).__name__, str(e), e.exit_code)
            except KeyboardInterrupt:  # Ctrl-C outside a writer: nothing written, or what was complete
                _fail(name, as_json, debug, "Interrupted", interrupted_message(), 130)
            except Exception as e:  # an unexpected failure is a bug: say so, briefly
                msg = f"internal error: {type(e).__name__}: {e}" + ("" if debug else " (run with --debug for details)")
                _fail(name, as_json, debug, "InternalError", msg, 1)
            try:
                if as_json:
                    _emit_json({"ok": exit_code == 0, "command": name, "result": result})
                else:
                    render()
            except KeyboardInterrupt:  # while printing the result: the artifact is complete, say so
                _fail(name, as_json, debug, "Interrupted", interrupted_message(), 130)
            if exit_code:
                sys.exit(exit_code)

        return wrapper

    return deco


def _fail(name: str, as_json: bool, debug: bool, kind: str, message: str, code: int) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)
    message = " ".join(message.split("\n"))
    if as_json:
        _emit_json({"ok": False, "command": name, "error": {"type": kind, "message": message, "exit_code": code}})
    else:
        # escaped: a path or tensor name like "[/x]" is text, not markup; soft_wrap: one line, never re-wrapped
        err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bitconv")
def cli() -> None:
    """Convert Hugging Face checkpoints into quantized artifacts for real runtimes."""
