"""The ONNX writer: HF checkpoints as ONNX Runtime decoder folders (model.onnx + external data +
genai_config.json + tokenizer files), graphs written directly with `onnx.helper` (no torch).

plan.py (quant types, supported architectures, the plan) → decoder.py (the graph: weights.py,
bitlinear.py, moe.py on graph.py and external_data.py) → export.py (the atomic folder, genai_config.py).
`onnx` is optional: it is imported only when a graph is built.
"""
from .export import OnnxExportResult, check_output_folder, output_files, require_onnx, write_onnx
from .plan import OnnxPlan, OnnxQuant, get_onnx_quant, make_onnx_plan

__all__ = ["OnnxExportResult", "OnnxPlan", "OnnxQuant", "check_output_folder", "get_onnx_quant", "make_onnx_plan",
           "output_files", "require_onnx", "write_onnx"]
