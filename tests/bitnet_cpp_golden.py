"""bitnet.cpp's own I2_S GGUF of a tiny BitNet checkpoint, rebuilt from `golden/bitnet_cpp_i2s.json`.

The golden (made by `golden/make_golden_gguf.py` with a local bitnet.cpp build) records the file's
metadata, tensor infos and hashes, not its 74 MB. Everything in it is reproducible from the fixture
checkpoint: the vocabulary arrays bitconv writes too (tokens, token types, merges: same bytes), the
scores bitnet.cpp's converter adds (0 for the 128,000 BPE tokens, -1000 for the 256 added ones), the
F16 embedding and F32 norms (the checkpoint's values), and the I2_S codes. The golden also keeps
each I2_S scale, so the file is rebuilt byte for byte even where bitconv's own scale would differ.
The 28 bytes after each I2_S scale, uninitialised in bitnet.cpp's file, are zeros here.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import gguf_raw

GOLDEN_JSON = Path(__file__).parent / "golden" / "bitnet_cpp_i2s.json"


def load_golden() -> dict[str, Any]:
    return json.loads(GOLDEN_JSON.read_text())


def make_checkpoint(golden: dict[str, Any], path: Path) -> Path:
    import fixtures_bitnet

    return fixtures_bitnet.make_bitnet_checkpoint(path, **golden["fixture"])


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _scores_raw(token_types: list[int]) -> bytes:
    """convert-ms-to-gguf-bitnet.py's BpeVocab scores: 0.0 per BPE token, -1000.0 per added (CONTROL) token."""
    tt = np.asarray(token_types)
    scores = np.where(tt == 3, np.float32(-1000.0), np.float32(0.0)).astype("<f4")
    return struct.pack("<IQ", gguf_raw.VALUE_TYPE_IDS["FLOAT32"], len(scores)) + scores.tobytes()


def rebuild_kvs(golden: dict[str, Any], donor: gguf_raw.GGUFFile) -> list[gguf_raw.KV]:
    """The golden's metadata as KVs; hashed arrays come from `donor` (a bitconv GGUF of the same
    checkpoint) or, for the scores, from bitnet.cpp's rule. Each is checked against its sha256."""
    kvs = []
    for rec in golden["metadata"]:
        vtype = gguf_raw.VALUE_TYPE_IDS[rec["type"]]
        item = gguf_raw.VALUE_TYPE_IDS[rec["item_type"]] if "item_type" in rec else None
        if "value" in rec:
            raw = gguf_raw.encode_value(vtype, rec["value"], item)
        elif rec["key"] == "tokenizer.ggml.scores":
            raw = _scores_raw(donor.kv("tokenizer.ggml.token_type").value)
        else:
            raw = donor.kv(rec["key"]).raw
        if "sha256" in rec and gguf_raw.sha256(raw) != rec["sha256"]:
            raise AssertionError(f"{rec['key']}: the regenerated array is not bitnet.cpp's")
        kvs.append(gguf_raw.KV(rec["key"], vtype, raw, item))
    return kvs


def rebuild_tensors(golden: dict[str, Any], donor: gguf_raw.GGUFFile) -> list[tuple[gguf_raw.TensorInfo, bytes]]:
    """The golden's tensors in its order: F16/F32 bytes and I2_S codes from `donor` (checked
    against the golden's sha256s), I2_S scales from the golden, zero pads."""
    out = []
    for rec in golden["tensors"]:
        data = donor.tensor_bytes(rec["name"])
        if rec["type"] == "I2_S":
            n = rec["ne"][0] * rec["ne"][1] // 4
            if gguf_raw.sha256(data[:n]) != rec["codes_sha256"]:
                raise AssertionError(f"{rec['name']}: the regenerated I2_S codes are not bitnet.cpp's")
            data = data[:n] + bytes.fromhex(rec["scale_hex"]) + bytes(28)
        if gguf_raw.sha256(gguf_raw.i2s_meaningful(rec["type"], rec["ne"], data)) != rec["sha256"]:
            raise AssertionError(f"{rec['name']}: the regenerated tensor is not bitnet.cpp's")
        out.append((gguf_raw.TensorInfo(rec["name"], list(rec["ne"]), rec["type_id"], 0), data))
    return out


def rebuild_bitnet_cpp_file(golden: dict[str, Any], donor_path: Path, out: Path) -> Path:
    """Write bitnet.cpp's I2_S file (pads zeroed) from the golden and bitconv's i2_s GGUF of the
    same checkpoint; the result's sha256 is the golden's `file_sha256_pads_zeroed`."""
    donor = gguf_raw.read(donor_path)
    gguf_raw.write(out, rebuild_kvs(golden, donor), rebuild_tensors(golden, donor), golden["gguf_version"],
                   golden["alignment"])
    return out


@dataclass
class BitnetCppGolden:
    golden: dict[str, Any]
    checkpoint: Path      # the fixture checkpoint the golden was made from
    ours_i2s: Path        # bitconv.convert(checkpoint, "gguf", "i2_s")
    bitnet_i2s: Path      # bitnet.cpp's own I2_S file, rebuilt (pads zeroed)

    def i2s_records(self) -> list[dict[str, Any]]:
        return [t for t in self.golden["tensors"] if t["type"] == "I2_S"]


def build(root: Path) -> BitnetCppGolden:
    import bitconv

    golden = load_golden()
    ckpt = make_checkpoint(golden, root / "bitnet-tiny")
    ours = root / "bitconv-i2_s.gguf"
    bitconv.convert(ckpt, "gguf", "i2_s", ours, manifest=False)
    theirs = rebuild_bitnet_cpp_file(golden, ours, root / "bitnet-cpp-i2_s.gguf")
    return BitnetCppGolden(golden, ckpt, ours, theirs)
