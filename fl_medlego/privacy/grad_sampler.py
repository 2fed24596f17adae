"""Per-example gradients of the SVD-LoRA update for Opacus, in closed form.

Opacus computes per-example gradients from each layer's input x and the gradient g of its output.
For out = s * ((x A^T) * E) B^T, with u = x A^T (per token) and summing over tokens t:

    dB[n] = s * sum_t g[n,t]^T (u[n,t] * E)
    dE[n] = s * sum_t (g[n,t] B) * u[n,t]
    dA[n] = s * sum_t ((g[n,t] B) * E)^T x[n,t]

Three einsums over the batch, instead of Opacus's generic functorch path (a vmap over a copy of the
layer per call). `tests/test_privacy.py` checks them against a loop of single-example backward passes.
Importing this module registers the sampler with Opacus.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn

from ..lora.layer import SVDLoRAUpdate


@register_grad_sampler(SVDLoRAUpdate)
def svd_lora_grad_sample(layer: SVDLoRAUpdate, activations: list[torch.Tensor],
                         backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    x = activations[0].to(backprops.dtype)
    # Tokens (or any middle dimensions) flattened: (n, tokens, features); a 2-D input has one token.
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    g = backprops.reshape(backprops.shape[0], -1, backprops.shape[-1]) * layer.scale
    u = x @ layer.lora_A.T  # (n, t, r)
    g_r = g @ layer.lora_B  # (n, t, r): the output gradient brought back to rank space
    samples = {}
    if layer.lora_B.requires_grad:
        samples[layer.lora_B] = torch.einsum("nto,ntr->nor", g, u * layer.lora_E)
    if layer.lora_E.requires_grad:
        samples[layer.lora_E] = torch.einsum("ntr,ntr->nr", g_r, u)
    if layer.lora_A.requires_grad:
        samples[layer.lora_A] = torch.einsum("ntr,nti->nri", g_r * layer.lora_E, x)
    return samples
