"""SVD-LoRA: h = W x + s * B diag(E) A x on chosen linear maps of a frozen model (docs/method.md section 1)."""

from .config import SVDLoRAConfig
from .factors import Adapter, Factors
from .inject import adapter_updates, get_adapter, inject_svd_lora, orthogonality_penalty, set_adapter
from .io import load_adapter, save_adapter
from .layer import SVDLoRALinear, SVDLoRAUpdate

__all__ = [
    "Adapter", "Factors", "SVDLoRAConfig", "SVDLoRALinear", "SVDLoRAUpdate", "adapter_updates", "get_adapter",
    "inject_svd_lora", "load_adapter", "orthogonality_penalty", "save_adapter", "set_adapter",
]
