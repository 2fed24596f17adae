"""A run's output folder: merged adapter per round, metrics as JSON lines, and the final summary.

    RUN_DIR/round-001/            the combined update of round 1, as its site kind saves it
                                  (adapter/: adapter_config.json + adapter_model.safetensors; or backbone.safetensors)
    RUN_DIR/metrics.jsonl         one JSON object per event (train / evaluate / rejected reply)
    RUN_DIR/summary.json          per site: specialist and merged metrics, normalized accuracy
    RUN_DIR/summary.md            the same as a table
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .metrics import normalized_accuracy
from .report import run_figure, summary_markdown


class RunResults:
    def __init__(self, run_dir: Path, settings: dict) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.started = time.time()
        (self.run_dir / "settings.json").write_text(json.dumps(settings, indent=2, default=str))

    def log(self, event: str, **fields) -> None:
        record = {"event": event, "time": round(time.time() - self.started, 3), **fields}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, default=_json_safe) + "\n")

    def round_dir(self, server_round: int) -> Path:
        """Where round N's combined update is saved (by its site kind)."""
        return self.run_dir / f"round-{server_round:03d}"

    def write_summary(self, specialist: dict[str, dict], merged: dict[str, dict], extra: dict | None = None) -> dict:
        """Per site: the specialist's and the merged model's test metrics and merged / specialist ACC."""
        sites = {}
        for site in sorted(set(specialist) | set(merged)):
            own, mix = specialist.get(site, {}), merged.get(site, {})
            sites[site] = {"specialist": own, "merged": mix,
                           "normalized_acc": normalized_accuracy(mix.get("acc", math.nan), own.get("acc", math.nan))}
        summary = {"sites": sites, "wall_time_s": round(time.time() - self.started, 1),
                   "strategy": self.settings.get("strategy"), **(extra or {})}
        norm = [s["normalized_acc"] for s in sites.values() if not math.isnan(s["normalized_acc"])]
        summary["mean_normalized_acc"] = sum(norm) / len(norm) if norm else math.nan
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_safe))
        render_run(self.run_dir, summary)
        return summary


def render_run(run_dir: Path, summary: dict | None = None) -> list[Path]:
    """(Re)write summary.md and summary.png of a run folder from its saved summary and metrics."""
    run_dir = Path(run_dir)
    summary = summary or json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.md").write_text(summary_markdown(summary) + "\n![summary](summary.png)\n")
    events = []
    if (run_dir / "metrics.jsonl").is_file():
        events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    run_figure(summary, [e for e in events if e.get("event") == "evaluate"], run_dir / "summary.png")
    return [run_dir / "summary.md", run_dir / "summary.png"]


def _json_safe(value):
    return str(value)
