"""The safetensors writer (`bitconv hf2st`): Hugging Face checkpoint folders in the bitnet-packed,
compressed-tensors, bnb-nf4 / bnb-int8 and rounded layouts.

export.py (formats, result, output folder, the export) → bitnet_packed.py and layouts.py (each
layout's tensor plan and config.json; numerics from quant/) → writer.py (header, ordered
production, files, shards).
"""
from .export import (FORMATS, SafetensorsResult, StTensorRecord, check_format, check_output_folder, export,
                     export_bitnet_packed)
from .layouts import CT_DEFAULT_QUANT, check_block_size
from .writer import parse_shard_size

__all__ = ["CT_DEFAULT_QUANT", "FORMATS", "SafetensorsResult", "StTensorRecord", "check_block_size", "check_format",
           "check_output_folder", "export", "export_bitnet_packed", "parse_shard_size"]
