"""Merging as a data-free tool: saved adapters in, a saved adapter out.

    from fl_medlego.offline_merge import merge_saved_adapters
    merge_saved_adapters(["site_a/", "site_b/"], "merged/", method="medlego", energy=0.9)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .lora import Adapter, load_adapter, save_adapter
from .merging import merge_adapters


def merge_saved_adapters(inputs: Sequence[str | Path], output: str | Path, method: str = "medlego",
                         weights: Sequence[float] | None = None, **options) -> Adapter:
    """Load adapters (any ranks), merge them with a registered method, save the result to `output`.

    Nothing is written unless the merge succeeds, and an existing adapter at `output` is never
    overwritten silently: pass a new folder.
    """
    output = Path(output)
    if (output / "adapter_model.safetensors").exists():
        raise FileExistsError(f"{output} already holds an adapter: choose another output folder")
    adapters = [load_adapter(p) for p in inputs]
    merged = merge_adapters(adapters, method, weights, **options)
    merged.metadata["merge"]["inputs"] = [str(p) for p in inputs]
    save_adapter(merged, output)
    return merged
