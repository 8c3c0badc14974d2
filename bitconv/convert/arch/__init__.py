"""Architecture mappings, one module per family, registered by HF class name."""
from .base import (ARCHITECTURES, ArchMapping, SourceTensor, check_output_format, mapping_for, register_arch,
                   supported_architectures)

__all__ = ["ARCHITECTURES", "ArchMapping", "SourceTensor", "check_output_format", "mapping_for", "register_arch",
           "supported_architectures"]
