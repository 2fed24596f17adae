"""One comparison from several: seeds (or strategies) run as separate processes or on separate machines.

    fl-medlego combine compare-seed0/ compare-seed1/ compare-seed2/ -o compare/

Every part must compare the same sites with the same settings (the seed aside); a (row, seed) measured
in two parts must agree, else the combination is refused. Wall time is the sum of the parts' (the
compute spent, not the elapsed time when they ran side by side).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import with_new_defaults
from ..errors import UserError
from ..files import write_json_atomic
from .table import render_comparison


def _without_seed(settings: dict) -> dict:
    out = {k: v for k, v in with_new_defaults(settings).items() if k != "seed"}
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k not in ("seed", "progress")}
    return out


def combine_comparisons(parts: list[dict]) -> dict:
    if not parts:
        raise UserError("combine needs at least one comparison folder")
    first = parts[0]
    combined = {"settings": first["settings"], "sites": first["sites"], "rows": {}, "seeds": [], "wall_time_s": 0.0}
    for i, part in enumerate(parts):
        if part["sites"] != first["sites"]:
            raise UserError(f"part {i} compares sites {part['sites']}, part 0 {first['sites']}: not one comparison")
        if _without_seed(part["settings"]) != _without_seed(first["settings"]):
            differing = sorted(k for k in _without_seed(first["settings"])
                               if _without_seed(part["settings"]).get(k) != _without_seed(first["settings"]).get(k))
            raise UserError(f"part {i} ran with other settings than part 0 (differing: {differing})")
        for row, by_seed in part["rows"].items():
            mine = combined["rows"].setdefault(row, {})
            for seed, record in by_seed.items():
                if seed in mine and mine[seed].get("test") != record.get("test"):
                    raise UserError(f"row {row!r}, seed {seed} differs between the parts: rerun one of them")
                mine[seed] = record
        combined["seeds"] = sorted(set(combined["seeds"]) | set(part["seeds"]))
        combined["wall_time_s"] = round(combined["wall_time_s"] + part.get("wall_time_s", 0.0), 1)
    return combined


def combine_folders(folders: list[str | Path], out_dir: str | Path) -> list[Path]:
    parts = [json.loads((Path(f) / "results.json").read_text()) for f in folders]
    combined = combine_comparisons(parts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", combined, default=str)
    return [out / "results.json", *render_comparison(combined, out)]
