"""The `adapter` kind (the default): sites train an SVD-LoRA adapter and a head on a frozen shared base;
only the adapter's factors travel, and the server merges them with any registered merge method."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .. import wire
from ..errors import ConfigError, UnknownNameError
from ..lora import Adapter, adapter_updates, get_adapter, inject_svd_lora, load_adapter, save_adapter, set_adapter
from ..lora.factors import Factors
from ..merging import adapter_norm, get_merge, list_merges, merge_adapters, option_grid
from ..merging.parts import check_prefixes, merge_by_parts
from ..models import SiteModel, create_backbone, shared_base
from ..seeds import site_seed
from ._registry import SiteKind, register_kind
from ._server import KindServer, MergeChoice
from ._site import KindSite

if TYPE_CHECKING:
    from ..data import SiteData


def _scaled_factors(f: Factors, factor: float) -> Factors:
    """B diag(E) A scaled by `factor`, in float32 without losing it: the factor goes onto E, as the site sent
    it, unless that leaves float32's range (clipping an update of tiny E and huge B, A by 1e-15 underflows
    E to zero), in which case B, E and A are first brought to one magnitude; the product is the same."""
    B, E, A = f.B.double(), f.E.double() * factor, f.A.double()
    float32 = torch.finfo(torch.float32)
    e, b, a = float(E.abs().max()), float(B.abs().max()), float(A.abs().max())
    # Entries under 2**-24 of the largest cannot move the norm in float32; the largest must stay normal.
    if e > 0 and b * a > 0 and not float32.tiny * 2**24 <= e <= float32.max:
        magnitude = (b * e * a) ** (1 / 3)
        B, E, A = B * (magnitude / b), E * (magnitude / e), A * (magnitude / a)
    return Factors(B.to(f.B.dtype), E.to(f.E.dtype), A.to(f.A.dtype))


class AdapterServer(KindServer):
    """Adapters on the wire (packed factors) and on disk (PEFT-style folders), merged by the run's merge."""

    def template(self) -> dict[str, tuple[int, int]]:
        """Matrix name -> (d_out, d_in) of every adapted matrix."""
        with torch.device("meta"):
            backbone = create_backbone(self.context.model_name, num_classes=0)
            inject_svd_lora(backbone, self.context.lora)
        return {name: (u.lora_B.shape[0], u.lora_A.shape[1]) for name, u in adapter_updates(backbone).items()}

    def size_bound(self, template: dict) -> int:
        return sum((o + i + 1) * min(o, i) for o, i in template.values()) + len(template)

    def norm(self, update: Adapter, reference: Adapter | None = None) -> float:
        return adapter_norm(update)

    def scaled(self, update: Adapter, factor: float, reference: Adapter | None = None) -> Adapter:
        return Adapter({name: _scaled_factors(f, update.scale * factor) for name, f in update.factors.items()},
                       scale=1.0, metadata=dict(update.metadata))

    def encode(self, update: Adapter) -> dict[str, torch.Tensor]:
        return wire.encode_adapter(update)

    def decode(self, tensors: dict[str, torch.Tensor], template: dict) -> Adapter:
        return wire.decode_adapter(tensors, template)

    def base_name(self) -> str:
        return self.context.model_name

    def save(self, update: Adapter, directory: Path, base_fingerprint: str | None) -> Path:
        return save_adapter(update, Path(directory) / "adapter", self.context.lora, self.base_name(), base_fingerprint)

    def load(self, directory: Path, base_fingerprint: str | None) -> Adapter:
        return load_adapter(Path(directory) / "adapter", expect_lora=self.context.lora, expect_base=self.base_name(),
                            expect_fingerprint=base_fingerprint)

    def check_merge(self, merge: MergeChoice) -> None:
        parts = merge.parts
        if not parts:
            return
        template = self.template()
        for key, prefixes in (("merge.part-methods", parts.methods), ("merge.part-weights", parts.weights)):
            try:
                check_prefixes(prefixes, template)
            except ValueError as err:
                raise ConfigError(f"{key} is refused: {err}") from None

    def combine(self, updates: Sequence[Adapter], weights: torch.Tensor | None, merge: MergeChoice) -> Adapter:
        if merge.parts:
            return merge_by_parts(updates, merge.method, weights, merge.options, merge.parts)
        return merge_adapters(updates, merge.method, weights, options=merge.options)

    def describe(self, update: Adapter) -> dict[str, float]:
        return {wire.MERGED_MAX_RANK: max(f.rank for f in update.factors.values())}


class AdapterSite(KindSite):
    """An SVD-LoRA adapter (rank by site) and a head on the frozen shared base."""

    def build_model(self, data: SiteData, update: Adapter | None,
                    head: dict[str, torch.Tensor] | None) -> SiteModel:
        c = self.context
        backbone, base_fingerprint = shared_base(c.model_name, c.pretrained, c.seed)
        site = data.site.name
        # Adapter init and head differ by site, reproducibly, without touching the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(site_seed(c.seed, site))
            inject_svd_lora(backbone, dataclasses.replace(c.lora, rank=c.rank_of(site)))
            model = SiteModel(backbone, data.num_classes, c.image_size, base_fingerprint)
        if head is not None:
            model.head.load_state_dict(head)
        if update is not None:
            set_adapter(model.backbone, update)
        return model

    def extract(self, model: SiteModel) -> Adapter:
        return get_adapter(model.backbone)


@register_kind
class AdapterKind(SiteKind):
    name = "adapter"
    summary = "SVD-LoRA adapter + head on a frozen shared base; the low-rank factors are merged"
    specialist_label = "SVD-LoRA"
    supports_privacy = True
    saves_adapters = True  # its updates are SVD-LoRA adapter folders (`fl-medlego evaluate` scores those)
    site_type = AdapterSite
    server_type = AdapterServer

    def strategies(self) -> list[str]:
        return list_merges()

    def merge_options(self, strategy: str, shared: dict, options: dict) -> object:
        merge = get_merge(strategy)
        fields = {f.name for f in dataclasses.fields(merge.options_type)}
        return merge.make_options(**{**{k: v for k, v in shared.items() if k in fields}, **options})

    def option_grid(self, strategy: str) -> list[dict]:
        return option_grid(strategy)

    def part_merge_options(self, methods: dict[str, str], shared: dict, weighted: bool) -> dict[str, tuple]:
        for prefix, method in methods.items():
            if method not in self.strategies():
                raise UnknownNameError("merge method", method, self.strategies(),
                                       hint=f"given for part {prefix!r}")
        return {prefix: (method, self.merge_options(method, shared, {})) for prefix, method in methods.items()}
