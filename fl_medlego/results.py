"""A run's output folder: merged adapter per round, metrics as JSON lines, and the final summary.

    RUN_DIR/round-001/            the combined update of round 1, as its site kind saves it
                                  (adapter/: adapter_config.json + adapter_model.safetensors; or backbone.safetensors),
                                  and round.json, the state a resumed run continues from. Written as round-001.tmp/
                                  and renamed once complete: a round folder is never half written.
    RUN_DIR/metrics.jsonl         one JSON object per event (train / evaluate / rejected reply)
    RUN_DIR/summary.json          per site: specialist and merged metrics, normalized accuracy
    RUN_DIR/summary.md            the same as a table, the run's status and each site's, and what the numbers
                                  do not say (a specialist at its majority-class rate, a ratio above 1)
    RUN_DIR/summary.png           the same as a figure (a failed run's: what there is, or why there is nothing)
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, UserError
from .files import replace_dir, write_text_atomic
from .metrics import at_majority_rate, normalized_accuracy
from .report import run_figure, summary_markdown
from .wire import MAJORITY_RATE

ROUND_STATE = "round.json"
INTERNAL_ERRORS = "errors.log"  # tracebacks of the coordinator's own faults (never a site's text alone)
LOCK = ".lock"  # held (flock) by the live run that writes the folder; says its pid and run id


@dataclass
class RoundLedger:
    """What one round of the coordinator did, built by the strategy's pipeline and persisted by RunResults.

    accepted: site -> its reply as read at the trust boundary (and passed the installed layers' checks);
    kept: site -> the update the guard let through (clipped, maybe); decisions: the guard's, per site;
    events: what metrics.jsonl gets for the round, in order.
    """

    round: int
    accepted: dict[str, Any] = field(default_factory=dict)
    kept: dict[str, Any] = field(default_factory=dict)
    decisions: list = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    def event(self, event: str, **fields) -> None:
        self.events.append({"event": event, "round": self.round, **fields})
_ROUND = re.compile(r"round-(\d{3,})$")


class RunResults:
    def __init__(self, run_dir: Path, settings: dict, resume: bool = False, may_change: tuple[str, ...] = (),
                 run_id: int | None = None) -> None:
        """A new run folder, or (resume=True) an existing one, whose settings must be the same but for the keys
        in `may_change` (where and how long a resumed run waits, say). settings.json holds every setting the
        run uses, as given.

        The folder is this run's alone until `release()` (or until this object or its process is gone): a
        second RunResults on it, resume or not, is refused while the first is alive (run_id: named in that
        refusal, for `flwr stop`)."""
        self.run_dir = Path(run_dir)
        settings_path = self.run_dir / "settings.json"
        text = json.dumps(settings, indent=2, default=str)
        if resume and not settings_path.is_file():
            raise FileNotFoundError(f"cannot resume {self.run_dir}: it holds no settings.json (not a run folder)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_run_dir(self.run_dir, run_id)  # before anything in the folder is read or changed
        self._unlock = weakref.finalize(self, os.close, self._lock)
        if resume:
            before, now = json.loads(settings_path.read_text()), json.loads(text)
            changed = sorted(k for k in set(before) | set(now) if k not in may_change and before.get(k) != now.get(k))
            if changed:
                self.release()
                raise ConfigError(f"cannot resume {self.run_dir} with other settings than it was started with "
                                  f"({', '.join(changed)} differ): pass the same --run-config (plus resume)")
            for stale in self.run_dir.glob("round-*.tmp"):  # a round that was being written when the run died
                shutil.rmtree(stale)
        self.settings = settings
        self.started = time.time()
        write_text_atomic(settings_path, text)

    def release(self) -> None:
        """The run is over: another run (a resume) may take the folder. Writing on is still possible."""
        self._unlock()

    def log(self, event: str, **fields) -> None:
        record = {"event": event, "time": round(time.time() - self.started, 3), **fields}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, default=_json_safe) + "\n")

    def record_events(self, ledger: RoundLedger) -> None:
        """A round's events, in order (also those of a round that failed: they say why)."""
        for record in ledger.events:
            self.log(**{**record, "round": record.get("round", ledger.round)})

    def log_internal_error(self, what: str, trace: str) -> Path:
        """A fault of the coordinator itself, with its traceback, for the report a user files."""
        path = self.run_dir / INTERNAL_ERRORS
        with open(path, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: {what}\n{trace.rstrip()}\n")
        return path

    def round_dir(self, server_round: int) -> Path:
        """Where round N's results are, once complete."""
        return self.run_dir / f"round-{server_round:03d}"

    def staging_dir(self, server_round: int) -> Path:
        """Where round N's results are written until the round is complete."""
        path = self.run_dir / f"round-{server_round:03d}.tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def finish_round(self, server_round: int, state: dict) -> Path:
        """Write the round's state last, then move the whole round folder into place."""
        staging = self.staging_dir(server_round)
        write_text_atomic(staging / ROUND_STATE, json.dumps(state, indent=2, default=_json_safe))
        replace_dir(staging, self.round_dir(server_round))
        return self.round_dir(server_round)

    def last_complete_round(self) -> tuple[int, dict]:
        """The last round whose folder is complete, and its state (0 and {} before the first)."""
        rounds = sorted((int(m.group(1)) for p in self.run_dir.iterdir() if (m := _ROUND.match(p.name))
                         and (p / ROUND_STATE).is_file()), reverse=True)
        for last in rounds:
            try:
                return last, json.loads((self.round_dir(last) / ROUND_STATE).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):  # an unreadable state: the round before it
                continue
        return 0, {}

    def write_summary(self, specialist: dict[str, dict], merged: dict[str, dict], extra: dict | None = None) -> dict:
        """Per site: the specialist's and the merged model's test metrics and merged / specialist ACC."""
        sites = {}
        for site in sorted(set(specialist) | set(merged)):
            own, mix = specialist.get(site, {}), merged.get(site, {})
            sites[site] = {"specialist": own, "merged": mix,
                           "normalized_acc": normalized_accuracy(mix.get("acc", math.nan), own.get("acc", math.nan)),
                           # a specialist that scores a constant guess learned nothing: its ratio flatters
                           "specialist_at_majority_rate": at_majority_rate(
                               {MAJORITY_RATE: mix.get(MAJORITY_RATE, math.nan), **own})}
        summary = {"sites": sites, "wall_time_s": round(time.time() - self.started, 1),
                   "strategy": self.settings.get("strategy"), **(extra or {})}
        summary["specialists_at_majority_rate"] = [s for s, entry in sites.items()
                                                   if entry["specialist_at_majority_rate"]]
        norm = [s["normalized_acc"] for s in sites.values() if not math.isnan(s["normalized_acc"])]
        summary["mean_normalized_acc"] = sum(norm) / len(norm) if norm else math.nan
        write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2, default=_json_safe))
        render_run(self.run_dir, summary)
        return summary


def _lock_run_dir(run_dir: Path, run_id: int | None) -> int:
    """An exclusive flock on RUN_DIR/.lock, or a UserError naming the live run that holds it. The kernel drops
    the lock when its process ends, however it ends, so a killed run never leaves its folder locked."""
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        pid = f" (pid {holder['pid']})" if holder.get("pid") else ""
        run = holder.get("run_id") or "RUN_ID"
        raise UserError(f"{run_dir} is in use by a live run{pid}: wait for it to end, or stop it with "
                        f"`flwr stop {run}` (see `flwr list`), then resume it") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "run_id": run_id}).encode(), 0)
    return fd


def _lock_holder(fd: int) -> dict:
    """What the holder wrote into the lock file ({} if it has not yet, or wrote something else)."""
    try:
        holder = json.loads(os.pread(fd, 200, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def render_run(run_dir: Path, summary: dict | None = None) -> list[Path]:
    """(Re)write summary.md and summary.png of a run folder from its saved summary and metrics."""
    run_dir = Path(run_dir)
    summary = summary or json.loads((run_dir / "summary.json").read_text())
    write_text_atomic(run_dir / "summary.md", summary_markdown(summary) + "\n![summary](summary.png)\n")
    events = read_events(run_dir / "metrics.jsonl")
    latest = {(e.get("round"), e.get("site")): e for e in events if e.get("event") == "evaluate"}
    run_figure(summary, list(latest.values()), run_dir / "summary.png")  # a redone round counts once
    return [run_dir / "summary.md", run_dir / "summary.png"]


def read_events(path: Path) -> list[dict]:
    """The events of metrics.jsonl; a line cut off by a crash is skipped."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def _json_safe(value):
    return str(value)
