"""`bitconv` command line: click commands over bitconv.api, rich output, --json, exit codes.

stdout holds the result (human text, or exactly one JSON object with --json, on failure too);
progress and logs go to stderr. Exit codes: 0 ok · 1 internal error · 2 bad usage or input ·
3 validation failed · 130 interrupted.

The group and the shared plumbing live in `_common`; each command module registers its commands
on the group when it is imported (below, so `import bitconv.cli` gives the whole command line).
"""
from __future__ import annotations

import gc
import sys

import click

from ..errors import end_cli_run, end_cli_startup
from ..formats.atomic import interrupted_message
from ._common import _emit_json, _fail, cli, command, err, out


def main() -> None:
    """Entry point: click usage errors become exit 2 (and JSON with --json)."""
    end_cli_startup()
    gc.freeze()  # what the imports made lives for the whole run: spare it the collector's full scans
    try:
        try:
            cli.main(standalone_mode=False)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except (click.Abort, KeyboardInterrupt):  # Ctrl-C while click parsed the command line
            args = sys.argv[1:]
            _fail(next((a for a in args if not a.startswith("-")), ""), "--json" in args, False, "Interrupted",
                  interrupted_message(), 130)
        except click.ClickException as e:
            if "--json" in sys.argv[1:]:
                cmd = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
                _emit_json({"ok": False, "command": cmd,
                            "error": {"type": "UsageError", "message": e.format_message(), "exit_code": 2}})
            else:
                e.show()
            sys.exit(2)
        sys.exit(0)
    except SystemExit as e:  # done: a Ctrl-C while the interpreter shuts down has nothing left to stop
        end_cli_run(e.code if isinstance(e.code, int) else 1)
        raise


# the command modules: importing them registers their commands on `cli`
from . import batch, convert, inspect, quantize, validate  # noqa: E402,F401

__all__ = ["cli", "command", "err", "main", "out"]
