"""What a kind is built with: the few settings of a run that a site kind reads, and nothing else.

A kind never sees the whole run config: `fl_medlego.config.RunConfig.kind_context` builds this once
from it, so that the kinds import nothing from the config (and a new kind's settings come in its own
group, `settings`, parsed from its own key prefix).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..lora import SVDLoRAConfig
from ..train import TrainConfig


@dataclass(frozen=True)
class KindContext:
    """model_name / pretrained / seed: the frozen shared base (and every seeded draw); image_size: the
    backbone's input; lora: the adapter settings; train: the run's training settings; settings: the
    kind's own settings group (None where it declares none); site_ranks: each site's adapter rank
    (a site not listed gets lora.rank); site_flags: the modality of every site of the run, in order."""

    model_name: str
    pretrained: str
    seed: int
    image_size: int
    lora: SVDLoRAConfig
    train: TrainConfig
    settings: object | None = None
    site_ranks: dict[str, int] = field(default_factory=dict)
    site_flags: tuple[str, ...] = ()

    def rank_of(self, site: str) -> int:
        """The adapter rank of a site (lora.rank unless the run gives it its own)."""
        return self.site_ranks.get(site, self.lora.rank)
