"""Backbones over timm, and the site model (a shared frozen backbone + a site's own head).

The project's presets are registered with timm (`timm.create_model("vit_medmnist_28")` works), and
carry their settings in the name, as timm's own do:
- `vit_medmnist_28`: a depth-6, width-128 ViT with 4-pixel patches for 28 px MedMNIST; trains on a CPU.
Any timm name works as well, e.g. `vit_base_patch16_224`, the paper's ViT-B/16 at 224 px (a GPU configuration).
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import logging
from pathlib import Path

import timm
import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .bases import BUNDLED, bundled_base
from .errors import ConfigError, UnknownNameError

log = logging.getLogger(__name__)

# timm reads the pretrained configs of a module's models from its `default_cfgs` when they register.
default_cfgs = generate_default_cfgs({
    "vit_medmnist_28": {"input_size": (3, 28, 28), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                        "num_classes": 0, "license": "apache-2.0"},
})


@register_model
def vit_medmnist_28(pretrained: bool = False, **kwargs) -> nn.Module:
    """ViT for 28 px MedMNIST: depth 6, width 128, 4 heads, 4-pixel patches (49 tokens); ViT-S/16's other settings.

    No hub weights: the project's own offline base is `model.pretrained='bundled'` (fl_medlego.bases).
    """
    if pretrained:
        raise ConfigError("vit_medmnist_28 has no timm hub weights: use create_backbone(..., pretrained='bundled')")
    args = dict(img_size=28, patch_size=4, embed_dim=128, depth=6, num_heads=4)
    return timm.create_model("vit_small_patch16_224", pretrained=False, **{**args, **kwargs})


def list_presets() -> list[str]:
    """The backbones this project registers with timm."""
    return timm.list_models(module=__name__.rsplit(".", 1)[-1])


def check_backbone_name(name: str) -> None:
    """Refuse a name timm does not know; timm knows over a thousand, so list the presets and timm's closest."""
    if timm.is_model(name):
        return
    err = UnknownNameError("backbone preset", name, list_presets())
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    err.args = (f"{err}; or any timm model name{' such as ' + ', '.join(close) if close else ''} "
                "(timm.list_models())",)
    raise err


def preset_image_size(name: str) -> int:
    """The input size a backbone name expects (its timm pretrained config; 224 when timm has none)."""
    cfg = timm.get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if cfg is not None else 224


def create_backbone(
    name: str = "vit_medmnist_28", num_classes: int = 0, pretrained: str = "none", seed: int = 0, **overrides
) -> nn.Module:
    """Create a timm backbone by name (the project's presets are timm names too).

    pretrained: "none" (random init drawn from `seed`, so every site builds the same base),
    "bundled" (the base this package ships for the preset, see fl_medlego.bases),
    "timm" (timm's hub weights: needs the internet), or the path of a local checkpoint
    (.safetensors or a torch state dict; classifier-head keys that do not fit are skipped).
    num_classes=0 returns pooled features (the site model adds its own head).
    """
    check_backbone_name(name)
    if pretrained == "timm":
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **overrides)
    checkpoint = bundled_base(name) if pretrained == BUNDLED else pretrained  # fails early if none is shipped
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **overrides)
    if checkpoint not in ("none", "", None):
        load_checkpoint(model, checkpoint)
    return model


def shared_base(name: str, pretrained: str = "none", seed: int = 0) -> tuple[nn.Module, str]:
    """A fresh copy of the shared frozen base and its fingerprint.

    Built once per process and copied after: timm's initialisation, the checkpoint read and the hash are
    the slow part of every site message for large backbones (seconds for ViT-B/16).
    """
    path = Path(pretrained).expanduser()
    version = path.stat().st_mtime_ns if path.is_file() else 0  # a rewritten checkpoint is a new base
    base, base_fingerprint = _cached_base(name, pretrained, seed, version)
    return copy.deepcopy(base), base_fingerprint


@functools.lru_cache(maxsize=2)
def _cached_base(name: str, pretrained: str, seed: int, version: int) -> tuple[nn.Module, str]:
    model = create_backbone(name, num_classes=0, pretrained=pretrained, seed=seed)
    return model, fingerprint(model)


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"backbone checkpoint {path} not found: "
            "set model.pretrained to 'bundled', 'none', 'timm' or an existing file"
        )
    if path.suffix == ".safetensors":
        from .files import read_tensors

        state = read_tensors(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(fitting))
    missing = sorted(set(own) - set(fitting))
    if [k for k in missing if not k.startswith("head")]:
        raise ConfigError(f"checkpoint {path} does not fit {type(model).__name__}: missing {missing[:8]} ...")
    model.load_state_dict(fitting, strict=False)
    log.info("loaded backbone checkpoint %s (%d tensors, skipped %s)", path, len(fitting), skipped[:8])


def fingerprint(module: nn.Module) -> str:
    """A short hash of a module's frozen weights: sites must share the exact same base to merge adapters."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        if "lora_" in key:
            continue
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class SiteModel(nn.Module):
    """The shared backbone (frozen, carrying an adapter; or fully trained) and the site's own head.

    image_size: the input size the backbone expects; base_fingerprint: of the base it started from.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, image_size: int = 28, base_fingerprint: str = "") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.image_size, self.base_fingerprint = image_size, base_fingerprint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
