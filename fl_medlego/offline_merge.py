"""Merging as a data-free tool: saved adapters in, a saved adapter out.

    from fl_medlego.offline_merge import merge_saved_adapters
    merge_saved_adapters(["site_a/", "site_b/"], "merged/", method="medlego", energy=0.9)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import UserError
from .lora import Adapter, SVDLoRAConfig, load_adapter, save_adapter
from .lora.io import read_adapter_config
from .merging import get_merge, merge_adapters


def merge_saved_adapters(inputs: Sequence[str | Path], output: str | Path, method: str = "medlego",
                         weights: Sequence[float] | None = None, names: Sequence[str] | None = None,
                         **options) -> Adapter:
    """Load adapters (any ranks), merge them with a registered method, save the result to `output`.

    Every input must adapt the same targets of the same base (as their adapter_config.json say); the
    merged adapter says the same. Nothing is written unless the merge succeeds, and an existing
    adapter at `output` is never overwritten silently: pass a new folder. A Med-LEGO merge also keeps
    its exact, untruncated sum (fl_medlego.assembly), so that `fl-medlego edit` can add or remove a
    site later; `names` name the sites (default: the input folders' names).
    """
    output = Path(output)
    if (output / "adapter_model.safetensors").exists():
        raise UserError(f"{output} already holds an adapter: choose another output folder")
    if not inputs:
        raise UserError("merge needs at least one adapter folder")
    get_merge(method)  # an unknown method is refused before any file is read
    first = read_adapter_config(inputs[0])
    lora = SVDLoRAConfig.from_dict(first["svd_lora"]) if first.get("svd_lora") else None
    base, fingerprint = first.get("base_model_name_or_path"), first.get("base_model_fingerprint")
    adapters = [load_adapter(p, expect_lora=lora, expect_base=base, expect_fingerprint=fingerprint) for p in inputs]
    if weights is not None and len(weights) != len(adapters):
        raise UserError(f"got {len(weights)} merge weights for {len(adapters)} adapters")
    if method == "medlego":
        return _merge_editable(adapters, inputs, output, weights, names, lora, base, fingerprint, **options)
    try:
        merged = merge_adapters(adapters, method, weights, **options)
    except UserError:
        raise
    except ValueError as err:  # a method refusing these adapters (e.g. unequal ranks): the user's choice of inputs
        raise UserError(str(err)) from err
    merged.metadata["merge"]["inputs"] = [str(p) for p in inputs]
    save_adapter(merged, output, lora, base, fingerprint)
    return merged


def _site_names(inputs: Sequence[str | Path]) -> list[str]:
    """Each input folder's name, or parent/name where two share a name (a site's adapter/ subfolder)."""
    paths = [Path(p).resolve() for p in inputs]
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in paths]
    if len(set(names)) < len(names):
        names = [f"{name}#{i}" for i, name in enumerate(names)]
    return names


def _merge_editable(adapters, inputs, output, weights, names, lora, base, fingerprint, **options) -> Adapter:
    from .assembly import Assembly, write_generalist

    names = list(names) if names else _site_names(inputs)
    if len(set(names)) != len(names) or len(names) != len(adapters):
        raise UserError(f"each merged site needs its own name, got {names} for {len(adapters)} adapters "
                         "(name them NAME=FOLDER)")
    if weights is not None and any(w <= 0 for w in weights):
        raise UserError(f"an editable Med-LEGO merge weighs sites by positive weights, got {list(weights)}")
    assembly = Assembly.from_adapters(dict(zip(names, adapters)), dict(zip(names, weights)) if weights else None,
                                      get_merge("medlego").make_options(**options))
    return write_generalist(assembly, output, lora, base, fingerprint, inputs=[str(p) for p in inputs])
