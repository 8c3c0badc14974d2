"""The graph under construction: nodes, initializers and unique value names (onnx.helper nodes)."""
from __future__ import annotations

from typing import Any

import numpy as np


class Graph:
    """Nodes, initializers and unique value names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._names: dict[str, int] = {}

    def fresh(self, hint: str) -> str:
        n = self._names.get(hint, 0)
        self._names[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def op(self, op_type: str, inputs: list[str], hint: str, *, n_out: int = 1, domain: str | None = None,
           outputs: list[str] | None = None, **attrs: Any) -> Any:
        from onnx import helper

        outs = outputs or [self.fresh(f"{hint}/{op_type}" + (f"_{i}" if n_out > 1 else "")) for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(f"{hint}/{op_type}/node"),
                                           domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value: Any, dtype: Any = None) -> str:
        """A small inline constant initializer (shared when equal)."""
        from onnx import numpy_helper

        a = np.asarray(value, dtype=dtype)
        key = (a.dtype.str, a.shape, a.tobytes())
        if key not in self._consts:
            name = self.fresh(f"const/{a.dtype.name}")
            self.initializers.append(numpy_helper.from_array(a, name))
            self._consts[key] = name
        return self._consts[key]
