"""Architecture mappings, one module per family, registered by HF class name."""
from .base import (ARCHITECTURES, ArchMapping, SourceTensor, mapping_for, register_arch, require_output_format,
                   supported_architectures)

__all__ = ["ARCHITECTURES", "ArchMapping", "SourceTensor", "mapping_for", "register_arch", "require_output_format",
           "supported_architectures"]
