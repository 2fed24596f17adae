"""What the coordinator holds and spends per site: one round of the real ServerApp with N instant sites.

    python -m benchmarks.coordinator --sites 1000,10000          # each size in a fresh process
    python -m benchmarks.coordinator --sites 10000 --keep-replies # as before replies were released once read

The sites are the same code path a `flwr run` drives (discovery, the strategy's read -> check -> guard ->
combine -> record, the evaluation round, the summary), over the in-process grid (fl_medlego.cli.local_run),
but each site answers at once with an honest random rank-4 update of the default preset
(benchmarks.hostile_replies.honest_adapter): no training, so what is left is the coordinator's own work and
memory. Peak RSS is the process's high-water mark (resource.getrusage), minus nothing: the whole
coordinator, as `benchmarks.scale` reports the ServerApp's. Writes results/coordinator.csv.

This isolates what grows with N on the coordinator's side (the replies it holds, its per-site bookkeeping);
Flower's own message store and Ray are measured by `benchmarks.scale`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks._isolate import run_child, write_csv

FIELDS = ("sites", "keep_replies", "seconds", "per_site_ms", "peak_rss_mb", "merged", "status")


def instant_sites(fingerprint: str, template: dict):
    """A ClientApp call that answers every message at once, as an honest site would (random rank-4 updates)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from benchmarks.hostile_replies import honest_adapter
    from fl_medlego import wire
    from fl_medlego.lora import Adapter

    def answer(msg: Message, context) -> Message:
        hosted = str(context.node_config[wire.NODE_SITE])
        if msg.metadata.message_type == "query":
            return Message(RecordDict({wire.SITE_INFO: ConfigRecord({wire.SITES: hosted})}), reply_to=msg)
        site = str(msg.content[wire.CONFIG][wire.SITE])
        info = ConfigRecord({wire.SITE: site, wire.BASE_FINGERPRINT: fingerprint, wire.DATA_SOURCE: "instant"})
        if msg.metadata.message_type.startswith("train"):
            update: Adapter = honest_adapter(template, seed=hash(site) % 2**31)
            arrays = ArrayRecord(wire.encode_adapter(update))
            metrics_ = {wire.NUM_EXAMPLES: 16.0, wire.VAL_ACC: 0.5, wire.TRAIN_LOSS: 1.0, wire.BEST_EPOCH: 1.0}
            return Message(RecordDict({wire.METRICS: MetricRecord(metrics_), wire.SITE_INFO: info,
                                       wire.ARRAYS: arrays}), reply_to=msg)
        scores = {"acc": 0.5, "auc": 0.5, "f1": 0.5, "loss": 1.0, wire.NUM_EXAMPLES: 8.0}
        if msg.content[wire.CONFIG].get(wire.WITH_SPECIALIST, False):
            scores |= {wire.SPECIALIST_PREFIX + k: v for k, v in list(scores.items()) if k != wire.NUM_EXAMPLES}
        return Message(RecordDict({wire.METRICS: MetricRecord(scores), wire.SITE_INFO: info}), reply_to=msg)

    return answer


def child(case: dict) -> dict:
    """One round with `case['sites']` instant sites in this process."""
    from fl_medlego.cli.local_run import run_local_federation
    from fl_medlego.config import parse_run_config
    from fl_medlego.memory import peak_rss_mb

    if case["keep_replies"]:  # the old behaviour, for the before / after comparison
        from fl_medlego.server import strategy

        strategy.RELEASE_READ_REPLIES = False
    n = case["sites"]
    with tempfile.TemporaryDirectory() as tmp:
        config = {"sites": f"organa:{n}", "num-rounds": 1, "output-dir": f"{tmp}/outputs", "messages-per-node": 0,
                  "node-wait-timeout": 600}
        cfg = parse_run_config(config)
        fingerprint, _ = cfg.kind_server().federation_base(cfg.base_fingerprint)
        start = time.perf_counter()
        fed = run_local_federation(config, Path(tmp) / "state",
                                   client_app=instant_sites(fingerprint, cfg.kind_server().template()))
        seconds = time.perf_counter() - start
        summary = json.loads((fed.run_dir / "summary.json").read_text())
    return {"sites": n, "keep_replies": case["keep_replies"], "seconds": round(seconds, 1),
            "per_site_ms": round(1000 * seconds / n, 2), "peak_rss_mb": round(peak_rss_mb(), 0),
            "merged": len(summary.get("sites", {})), "status": summary.get("status")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", default="1000,10000")
    parser.add_argument("--keep-replies", action="store_true", help="hold every read reply's arrays (as before)")
    parser.add_argument("--output", default="coordinator", help="results/NAME.csv")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rows = []
    for n in (int(s) for s in args.sites.split(",")):
        rows.append(run_child("benchmarks.coordinator", {"sites": n, "keep_replies": args.keep_replies}, 3600))
        print(rows[-1], flush=True)
    print("\n| sites | replies kept | coordinator seconds | per site (ms) | peak RSS (MB) | merged | status |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sites']} | {r['keep_replies']} | {r['seconds']} | {r['per_site_ms']} | {r['peak_rss_mb']:.0f} "
              f"| {r['merged']} | {r['status']} |")
    write_csv(f"{args.output}.csv", rows)


if __name__ == "__main__":
    main()
