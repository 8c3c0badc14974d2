"""Interop matrices that take turns over their fixtures: each run checks a rotating share of the
combinations, every combination is checked within a few runs, and the suite stays near its time
budget. `BITCONV_TEST_TURN=all` runs every combination; `BITCONV_TEST_TURN=N` picks turn N (the
default is the day of the year, so consecutive CI days cover the whole matrix)."""
from __future__ import annotations

import os
import time
from typing import Sequence, TypeVar

X = TypeVar("X")


def turn() -> int | None:
    """This run's turn, or None when every combination runs."""
    value = os.environ.get("BITCONV_TEST_TURN", "").strip().lower()
    if value == "all":
        return None
    return int(value) if value else int(time.strftime("%j"))


def share(items: Sequence[X], k: int, offset: int = 0) -> list[X]:
    """`k` of `items` for this run: a window that moves by `k` each turn (shifted by `offset`, so
    the rows of one matrix cover different items in the same run)."""
    t = turn()
    if t is None or k >= len(items):
        return list(items)
    start = (t * k + offset) % len(items)
    return [items[(start + i) % len(items)] for i in range(k)]
