"""Fuzzed train replies through the coordinator's strategy: every family of broken or hostile reply.

    python -m benchmarks.fuzz [--replies 10000] [--seed 0]

Each case is one round: four honest sites and one whose reply is mutated (benchmarks/hostile_replies.py:
malformed records, forged or truncated array bytes, wrong dtypes, bad ranks, NaN/Inf/overflow,
undeclared or out-of-range metrics, spoofed sites and fingerprints, error replies, and well-formed
but oversized updates). Counts exceptions out of `aggregate_train`, invalid replies merged,
non-finite merged models and rejections without a reason, and times one reply; writes
benchmarks/results/fuzz.csv. The template is the default model's (12 matrices of 128 x 128).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from benchmarks._isolate import write_csv
from benchmarks.hostile_replies import BASE, HOSTILE, INVALID, SITES, VALID, honest_messages, hostile_message
from fl_medlego import wire
from fl_medlego.cli.local_run import set_task_identity
from fl_medlego.config import parse_run_config
from fl_medlego.results import RunResults
from fl_medlego.server.replies import read_train_reply
from fl_medlego.server.strategy import SiteMergeStrategy


def one_case(name: str, seed: int, template: dict, folder: Path) -> dict:
    """One round with the mutated reply: what escaped, what was merged, how long reading it took."""
    cfg = parse_run_config({"min-sites": 1})
    strategy = SiteMergeStrategy(SITES, template, cfg, RunResults(folder, {}), BASE)
    hostile = hostile_message(name, template, seed)
    start = time.perf_counter()
    try:
        read_train_reply(hostile, SITES, cfg.kind_server(), template)
    except wire.InvalidUpdate:
        pass
    except Exception as err:  # noqa: BLE001
        return {"exception": f"read_train_reply: {type(err).__name__}: {err}"[:200], "seconds": 0.0}
    read_s = time.perf_counter() - start
    replies = [*honest_messages(template, seed), hostile]
    start = time.perf_counter()
    try:
        arrays, _ = strategy.aggregate_train(1, replies)
    except Exception as err:  # noqa: BLE001  counting what escapes is the point
        return {"exception": f"{type(err).__name__}: {err}"[:200], "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    merged = wire.decode_adapter(arrays.to_torch_state_dict(), template)
    finite = all(torch.isfinite(f.B).all() and torch.isfinite(f.E).all() and torch.isfinite(f.A).all()
                 for f in merged.factors.values())
    state = strategy.status.get(HOSTILE, {}).get("state")
    events = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {"exception": "", "seconds": seconds, "read_s": read_s, "finite": finite,
            "invalid_merged": name in INVALID and state == "merged",
            "valid_refused": name in VALID and state != "merged",
            "reasonless": any(e["event"] == "rejected" and not e.get("reason") for e in events)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replies", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("fl_medlego").setLevel(logging.ERROR)  # rejections are counted, not printed
    set_task_identity()
    cfg = parse_run_config({})
    template = cfg.kind_server().template()
    names = sorted(INVALID) + sorted(VALID)
    rng = random.Random(args.seed)
    totals, families, slowest, slowest_read = Counter(), Counter(), 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.replies):
            name = names[i % len(names)]  # every family, then again with new random parameters
            case = one_case(name, rng.randrange(2**31), template, Path(tmp) / str(i))
            families[name] += 1
            totals["replies"] += 1
            totals["exceptions"] += bool(case["exception"])
            if case["exception"]:
                print(f"{name}: {case['exception']}", flush=True)
                continue
            totals["invalid merged"] += case["invalid_merged"]
            totals["valid refused"] += case["valid_refused"]
            totals["non-finite merged"] += not case["finite"]
            totals["rejections without a reason"] += case["reasonless"]
            totals["seconds"] += case["seconds"]
            slowest = max(slowest, case["seconds"])
            slowest_read = max(slowest_read, case["read_s"])
            totals["read seconds"] += case["read_s"]
            if (i + 1) % 1000 == 0:
                print(f"{i + 1} replies: {dict(totals)}", flush=True)
    n = max(totals["replies"], 1)
    row = {**{k: v for k, v in totals.items() if "seconds" not in k}, "families": len(families),
           "mean_ms_per_hostile_reply": round(1000 * totals["read seconds"] / n, 2),
           "slowest_hostile_reply_ms": round(1000 * slowest_read, 1),
           "mean_ms_per_round_of_5": round(1000 * totals["seconds"] / n, 2),
           "slowest_round_ms": round(1000 * slowest, 1)}
    print(row)
    write_csv("fuzz.csv", [row])


if __name__ == "__main__":
    main()
