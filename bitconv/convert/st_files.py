"""sentence-transformers' files beside an embedding model's weights: modules.json (the module list:
Transformer, Pooling, Normalize), its other configs and each listed module's config.json
(`1_Pooling/config.json`: the pooling). Exports copy them; the BitNet embedding mapping reads them."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError

ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def sentence_transformers_files(root: Path) -> list[Path]:
    """The sentence-transformers files in `root` (none outside it)."""
    files = [root / n for n in ST_FILES if (root / n).is_file()]
    modules = root / "modules.json"
    if not modules.is_file():
        return files
    try:
        paths = [str(m.get("path") or "") for m in json.loads(modules.read_text(encoding="utf-8"))]
    except (ValueError, OSError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{modules}: not a sentence-transformers module list ({type(e).__name__}: {e})") from e
    base = root.resolve()
    for rel in paths:
        cfg = root / rel / "config.json"
        if rel and not Path(rel).is_absolute() and cfg.is_file() and cfg.resolve().is_relative_to(base):
            files.append(cfg)
    return files
