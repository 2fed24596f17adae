"""Editing a Med-LEGO generalist: a site joins later, or withdraws and its contribution must go.

The Med-LEGO merge is linear until its truncation: generalist = truncate_v(S / W) with
S = sum_i c_i D_i and W = sum_i c_i (c_i = 1 for the uniform mean; with weights given explicitly, as
`fl-medlego merge --weights` takes them, W = 1 and S is the generalist's sum itself). An `Assembly` keeps S exactly, per
adapted matrix, in SVD form U diag(s) V^T of its support (rank at most the total rank R = sum r_i),
never as a dense d_out x d_in matrix. Adding a site is S + c D, removing it S - c D, each one QR-core SVD
of a sum of two low-rank terms (O((d_out + d_in) (R + r)^2) time, O((d_out + d_in) (R + r)) memory);
the generalist is then truncated again. So removal gives the adapter a fresh merge without that site
would give (up to float64 rounding), and adding one the adapter of a fresh merge with it.

What removal does not undo: in a federated run the other sites trained on the merged adapter in later
rounds, so their own updates carry what they learned from the removed site's contribution. Removal is
exact for one-shot assembly (the paper's setting) and for the round whose sum is edited, nothing more.

The assembly stores no site's adapter: removing a site needs the adapter it contributed, checked against
the fingerprint recorded when it joined. On disk (next to the generalist's adapter files):

    GENERALIST/assembly/sum/          the exact sum S as an adapter folder (scale 1, untruncated)
    GENERALIST/assembly/assembly.json sites (weight, adapter fingerprint), Med-LEGO options, edit log
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import backup_path, link_or_copy, replace_dir, write_json_atomic
from .lora import Adapter, Factors, SVDLoRAConfig, load_adapter, save_adapter
from .lora.io import read_adapter_config
from .merging._lowrank import energy_rank, svd_of_sum
from .merging.medlego import MedLegoOptions

ASSEMBLY_DIR = "assembly"
_SUPPORT_TOL = 1e-12  # singular values below this share of the largest are rounding left by a removal


def adapter_fingerprint(adapter: Adapter) -> str:
    """sha256 of an adapter's folded factors (what it contributes), independent of file layout."""
    digest = hashlib.sha256()
    for name, f in sorted(adapter.folded().items()):
        digest.update(name.encode())
        for t in (f.B, f.E, f.A):
            digest.update(t.detach().to(torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _combine(current: Factors | None, update: Factors, coefficient: float) -> Factors:
    """SVD form of current + coefficient * update, restricted to its support (float64)."""
    parts = [update] if current is None else [current, update]
    weights = torch.tensor([coefficient] if current is None else [1.0, coefficient], dtype=torch.float64)
    U, S, Vh = svd_of_sum(parts, weights)
    keep = max(1, int((S > _SUPPORT_TOL * S[0].clamp_min(1e-300)).sum()))
    return Factors(U[:, :keep].contiguous(), S[:keep].contiguous(), Vh[:keep].contiguous())


@dataclass
class Assembly:
    sums: dict[str, Factors]  # per matrix: S = sum_i c_i D_i in SVD form, float64
    sites: dict[str, dict]  # site -> {"weight": c_i, "fingerprint": sha256 of its adapter}
    options: MedLegoOptions = field(default_factory=MedLegoOptions)
    edits: list[dict] = field(default_factory=list)
    mean: bool = True  # divide S by the total weight (False: the weights were given as the merge's own)

    @classmethod
    def from_adapters(cls, adapters: dict[str, Adapter], weights: dict[str, float] | None = None,
                      options: MedLegoOptions | None = None) -> Assembly:
        assembly = cls({}, {}, options or MedLegoOptions(), mean=weights is None)
        for name, adapter in adapters.items():
            assembly = assembly.add(name, adapter, (weights or {}).get(name, 1.0), log=False)
        return dataclasses.replace(assembly, edits=[{"op": "create", "sites": list(adapters), "time": time.time()}])

    @property
    def total_weight(self) -> float:
        return sum(s["weight"] for s in self.sites.values())

    def add(self, site: str, adapter: Adapter, weight: float = 1.0, log: bool = True) -> Assembly:
        """A new assembly with `site`'s adapter added with weight c (the merge is the c-weighted mean)."""
        if site in self.sites:
            raise ValueError(f"site {site!r} is already in this generalist; remove it first to replace it")
        if not weight > 0:
            raise ValueError(f"a site's weight must be positive, got {weight}")
        folded = adapter.folded()
        if self.sums and set(folded) != set(self.sums):
            diff = sorted(set(folded).symmetric_difference(self.sums))
            raise ValueError(f"site {site!r}'s adapter adapts other matrices than this generalist ({diff[:5]})")
        sums = {name: _combine(self.sums.get(name), f.scaled(1.0), weight) for name, f in folded.items()}
        sites = {**self.sites, site: {"weight": weight, "fingerprint": adapter_fingerprint(adapter)}}
        edits = self.edits + ([{"op": "add", "site": site, "weight": weight, "time": time.time()}] if log else [])
        return Assembly(sums, sites, self.options, edits, self.mean)

    def remove(self, site: str, adapter: Adapter) -> Assembly:
        """A new assembly without `site`: its adapter (the one it contributed, checked) subtracted exactly."""
        if site not in self.sites:
            raise ValueError(f"site {site!r} is not in this generalist (sites: {', '.join(self.sites)})")
        if len(self.sites) == 1:
            raise ValueError(f"{site!r} is the only site: removing it leaves no generalist; delete the folder")
        if adapter_fingerprint(adapter) != self.sites[site]["fingerprint"]:
            raise ValueError(f"this is not the adapter {site!r} contributed (fingerprint differs): subtracting "
                             "another one would leave part of its contribution in the generalist")
        weight = self.sites[site]["weight"]
        sums = {name: _combine(self.sums[name], f, -weight) for name, f in adapter.folded().items()}
        sites = {k: v for k, v in self.sites.items() if k != site}
        edits = self.edits + [{"op": "remove", "site": site, "time": time.time()}]
        return Assembly(sums, sites, self.options, edits, self.mean)

    def generalist(self, options: MedLegoOptions | None = None) -> Adapter:
        """The Med-LEGO adapter of the current sites: S / W truncated by the energy rule. S is kept in SVD form,
        so this is the truncation alone (the same rule as the medlego merge, no new decomposition)."""
        options = options or self.options
        divide = self.total_weight if self.mean else 1.0
        factors = {}
        for name, f in self.sums.items():
            values = f.E / divide
            k = energy_rank(values, options.energy, options.max_rank)
            factors[name] = Factors(f.B[:, :k].float().contiguous(), values[:k].float(), f.A[:k].float().contiguous())
        merge = {"method": "medlego", "options": dataclasses.asdict(options), "dense": False,
                 "weights": [s["weight"] / divide for s in self.sites.values()], "sites": list(self.sites),
                 "edits": self.edits}
        return Adapter(factors, scale=1.0, metadata={"merge": merge})

    def total_rank(self) -> int:
        return max((f.rank for f in self.sums.values()), default=0)

    def save(self, directory: str | Path, lora: SVDLoRAConfig | None, base: str | None,
             fingerprint: str | None) -> None:
        """The sum and the record into DIRECTORY/assembly/, each file atomically (the record last)."""
        root = Path(directory) / ASSEMBLY_DIR
        save_adapter(Adapter(self.sums, scale=1.0), root / "sum", lora, base, fingerprint)
        record = {"sites": self.sites, "options": dataclasses.asdict(self.options), "edits": self.edits,
                  "mean": self.mean}
        write_json_atomic(root / "assembly.json", record)

    @classmethod
    def load(cls, directory: str | Path) -> Assembly:
        root = Path(directory) / ASSEMBLY_DIR
        if not (root / "assembly.json").is_file():
            raise FileNotFoundError(f"{directory} holds no editable assembly ({root}/assembly.json): it was merged "
                                    "without one; merge the sites again with `fl-medlego merge --method medlego`")
        record = json.loads((root / "assembly.json").read_text())
        summed = load_adapter(root / "sum")
        sums = {name: Factors(f.B.double(), f.E.double(), f.A.double()) for name, f in summed.factors.items()}
        return cls(sums, record["sites"], MedLegoOptions(**record["options"]), record["edits"], record["mean"])


def describe(adapter_dir: str | Path) -> tuple[SVDLoRAConfig | None, str | None, str | None]:
    """(targets, base name, base fingerprint) as an adapter folder's adapter_config.json states them."""
    config = read_adapter_config(adapter_dir)
    lora = SVDLoRAConfig.from_dict(config["svd_lora"]) if config.get("svd_lora") else None
    return lora, config.get("base_model_name_or_path"), config.get("base_model_fingerprint")


def write_generalist(assembly: Assembly, directory: str | Path, lora: SVDLoRAConfig | None, base: str | None,
                     fingerprint: str | None, **metadata) -> Adapter:
    """The generalist's adapter files and its assembly, written into `directory` (`metadata` joins the
    adapter's merge record)."""
    merged = assembly.generalist()
    merged.metadata["merge"] |= metadata
    assembly.save(directory, lora, base, fingerprint)
    save_adapter(merged, directory, lora, base, fingerprint)
    return merged


def edit_generalist(directory: str | Path, add: dict[str, str | Path] | None = None,
                    remove: dict[str, str | Path] | None = None, weights: dict[str, float] | None = None) -> Adapter:
    """Add and/or remove sites (name -> adapter folder) of the saved generalist in `directory`.

    Every adapter must fit the generalist's base and targets. A generalist merged with explicit weights
    keeps them as they are (removing a site does not rescale the others), so a site added to it needs
    its weight in `weights`. The edited generalist is written into a folder beside it, the folder's other
    files are linked (or copied) over, and the two are swapped (`replace_dir`): an edit that fails leaves
    the generalist as it was, and a swap cut short is completed by the next call."""
    directory = Path(directory).resolve()
    staging, previous = directory.with_name(directory.name + ".edit"), backup_path(directory)
    if not directory.exists() and previous.exists():  # a swap cut short after its first rename
        (staging if staging.exists() else previous).rename(directory)
        shutil.rmtree(previous, ignore_errors=True)
    lora, base, fingerprint = describe(directory)
    assembly = Assembly.load(directory)
    missing = [site for site in (add or {}) if not assembly.mean and site not in (weights or {})]
    if missing:
        raise ValueError(f"this generalist was merged with explicit weights: give the weight of {missing} "
                         "(fl-medlego edit --weight W)")

    def read(path: str | Path) -> Adapter:
        return load_adapter(path, expect_lora=lora, expect_base=base, expect_fingerprint=fingerprint)

    for site, path in (remove or {}).items():
        assembly = assembly.remove(site, read(path))
    for site, path in (add or {}).items():
        assembly = assembly.add(site, read(path), (weights or {}).get(site, 1.0))
    for leftover in (staging, previous):
        if leftover.exists():
            shutil.rmtree(leftover)
    merged = write_generalist(assembly, staging, lora, base, fingerprint)
    written = {p.name for p in staging.iterdir()}
    for other in directory.iterdir():  # the user's own files go with it; the folder stays whole until the swap
        if other.name not in written:
            link_or_copy(other, staging / other.name)
    replace_dir(staging, directory)
    return merged
