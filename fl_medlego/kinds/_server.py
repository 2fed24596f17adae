"""A kind's server half: the update's codec, size and combination (the Strategy's side), and its disk format.

    server = kind.server(context)
    template = server.template()
    update = server.decode(tensors, template)          # wire.InvalidUpdate when it does not fit
    combined = server.combine(updates, weights, merge)

A site reads the server's update with the same codec (encode / decode / template).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import ConfigError
from ..merging.parts import PartMerge
from ..models import shared_base
from ._context import KindContext

Update = Any
NO_PARTS = ("sites of kind {kind!r} send whole updates without named parts: leave merge.part-methods and "
            "merge.part-weights empty")
Template = dict  # what a valid update must look like (the kind decides)


class MergeChoice(Protocol):
    """How the run combines updates: a strategy name and its validated options object (or None)."""

    method: str
    options: object | None
    parts: PartMerge  # the matrices merged by another method or weighted apart (empty: none)


class KindServer(ABC):
    """The server half of a kind, bound to the run's kind context."""

    def __init__(self, kind, context: KindContext) -> None:
        self.kind, self.context = kind, context

    # -- the update on the wire and on disk ------------------------------------------------------
    @abstractmethod
    def template(self) -> Template:
        """What a valid update of the shared model looks like (built on the meta device: no weights)."""

    @abstractmethod
    def size_bound(self, template: Template) -> int:
        """The most values a valid encoded update can hold: larger replies are refused before they are read."""

    @abstractmethod
    def encode(self, update: Update) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def decode(self, tensors: dict[str, torch.Tensor], template: Template) -> Update:
        """The update in `tensors`, or wire.InvalidUpdate naming what is wrong."""

    @abstractmethod
    def save(self, update: Update, directory: Path, base_fingerprint: str | None) -> Path: ...

    @abstractmethod
    def load(self, directory: Path, base_fingerprint: str | None) -> Update: ...

    # -- the guard's maths and the combination ---------------------------------------------------
    @abstractmethod
    def norm(self, update: Update, reference: Update | None) -> float:
        """The update's size (Frobenius norm of what it changes, against `reference` where the kind keeps one)."""

    @abstractmethod
    def scaled(self, update: Update, factor: float, reference: Update | None) -> Update:
        """The update with what it changes scaled by `factor` (norm clipping)."""

    def check_merge(self, merge: MergeChoice) -> None:
        """Raises before any site trains when the merge cannot apply to this kind's updates (a part naming
        no matrix, say). A kind without named parts refuses any part-by-part merge."""
        if merge.parts:
            raise ValueError(NO_PARTS.format(kind=self.kind.name))

    @abstractmethod
    def combine(self, updates: Sequence[Update], weights: torch.Tensor | None, merge: MergeChoice) -> Update:
        """The federation's update from the sites' (weights: None for uniform, else summing to 1)."""

    def describe(self, update: Update) -> dict[str, float]:
        """Numbers about a combined update, for the round's aggregate metrics (wire names)."""
        return {}

    # -- the base ----------------------------------------------------------------------------------
    def shared_base(self) -> tuple[torch.nn.Module, str]:
        """A fresh copy of the frozen shared base and the fingerprint every site must report."""
        c = self.context
        return shared_base(c.model_name, c.pretrained, c.seed)

    def reference_of(self, base: torch.nn.Module) -> Update | None:
        """What the first round's updates are measured from (None: an update's size is its own)."""
        return None

    def federation_base(self, declared_fingerprint: str = "") -> tuple[str, Update | None]:
        """The base fingerprint every site must share, and the first round's reference (`reference_of`).

        declared_fingerprint: model.fingerprint; where the kind keeps no reference it is taken as given, so a
        coordinator without the base's weights can run. Otherwise the base is built as the sites build it and
        must have that fingerprint."""
        if declared_fingerprint and not self.keeps_reference:
            return declared_fingerprint, None
        try:
            base, fingerprint = self.shared_base()
        except (FileNotFoundError, ValueError) as err:
            if self.keeps_reference:  # its updates are measured against the base: a fingerprint cannot stand in
                raise ConfigError(f"the coordinator cannot build the base model ({err}); this kind measures every "
                                  "update against the base's weights, so the coordinator needs them too: make "
                                  "model.pretrained readable here") from err
            raise ConfigError(f"the coordinator cannot build the base model to fingerprint it ({err}); "
                              "set model.fingerprint to the fingerprint the sites report") from err
        if declared_fingerprint and declared_fingerprint != fingerprint:
            raise ConfigError(f"model.fingerprint {declared_fingerprint} is not the fingerprint of the configured "
                              f"base ({fingerprint})")
        return fingerprint, self.reference_of(base)

    keeps_reference = False  # whether `reference_of` gives one: an update's size is then a change from it
