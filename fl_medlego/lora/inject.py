"""Put SVD-LoRA into any timm ViT by module name, and read or write its adapter."""

from __future__ import annotations

import torch
from torch import nn

from .config import SVDLoRAConfig
from .factors import Adapter, Factors
from .layer import SVDLoRALinear, SVDLoRAUpdate


def _matches(module_name: str, target: str) -> bool:
    """A target matches whole dotted components at the end of a module name."""
    return module_name == target or module_name.endswith("." + target)


def _parts_for(module_name: str, linear: nn.Linear) -> dict[str, tuple[int, int]]:
    if module_name.split(".")[-1] == "qkv":
        if linear.out_features % 3:
            raise ValueError(f"{module_name}: a fused qkv needs 3 * d output rows, has {linear.out_features}")
        d = linear.out_features // 3
        # timm stacks the rows as [Q; K; V]: adapt Q and V, leave K untouched (docs/method.md section 1).
        return {"q": (0, d), "v": (2 * d, 3 * d)}
    return {"": (0, linear.out_features)}


def inject_svd_lora(model: nn.Module, config: SVDLoRAConfig) -> nn.Module:
    """Freeze every parameter of `model` and wrap each targeted nn.Linear in an SVDLoRALinear.

    Returns the same model, modified in place. A target that matches nothing is an error, so a typo
    in a config never trains a model without adapters.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    targets = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(_matches(name, t) for t in config.targets)
    }
    unmatched = [t for t in config.targets if not any(_matches(name, t) for name in targets)]
    if unmatched:
        raise ValueError(f"SVD-LoRA targets {unmatched} match no nn.Linear in {type(model).__name__}")
    for name, linear in targets.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = SVDLoRALinear(linear, _parts_for(name, linear), config.rank, config.scale, config.init_std)
        setattr(parent, child, wrapped.to(linear.weight.device))
    return model


def adapter_updates(model: nn.Module) -> dict[str, SVDLoRAUpdate]:
    """Stable matrix name (e.g. `blocks.0.attn.qkv.q`, `blocks.0.mlp.fc1`) -> its update module."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, SVDLoRALinear):
            for part, update in module.named_updates().items():
                found[f"{name}.{part}" if part else name] = update
    return found


def get_adapter(model: nn.Module, metadata: dict | None = None) -> Adapter:
    updates = adapter_updates(model)
    if not updates:
        raise ValueError("the model has no SVD-LoRA layers: call inject_svd_lora first")
    scales = {u.scale for u in updates.values()}
    if len(scales) != 1:
        raise ValueError(f"adapter layers disagree on their scale: {sorted(scales)}")
    # Clone: the adapter must not change when training goes on.
    factors = {name: Factors(u.lora_B.detach().clone(), u.lora_E.detach().clone(), u.lora_A.detach().clone())
               for name, u in updates.items()}
    return Adapter(factors, scale=scales.pop(), metadata=dict(metadata or {}))


def set_adapter(model: nn.Module, adapter: Adapter) -> None:
    """Load an adapter's factors (any ranks) into the model's layers; names must match exactly."""
    updates = adapter_updates(model)
    missing = sorted(set(updates) - set(adapter.factors))
    extra = sorted(set(adapter.factors) - set(updates))
    if missing or extra:
        raise ValueError(f"adapter does not fit the model: missing matrices {missing}, unknown matrices {extra}")
    for name, update in updates.items():
        update.set_factors(adapter.factors[name], adapter.scale)


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of the orthogonality regulariser over every adapted matrix."""
    penalties = [u.orthogonality_penalty() for u in adapter_updates(model).values()]
    return torch.stack(penalties).sum() if penalties else torch.zeros(())
