"""Scale: round time and server memory with 10, 100 and 1000 simulated sites (tiny shards).

    python -m benchmarks.scale --data-root PATH_TO_MEDMNIST [--sites 10,100,1000]

Each run is one `flwr run scenarios/many_sites` round over organA split into N sites (16 training
and 8 validation / test images per site, rank 4), on about sqrt(N) simulated nodes of about sqrt(N)
sites each (`--sites-per-node K` fixes K instead). Round time and the ServerApp's peak RSS come from
the run's metrics.jsonl ("round" event). Writes results/scale.csv/png.

Why sqrt(N): two costs of Flower 1.41's simulation grow with the layout. A node keeps its sites' state
(heads, specialist adapters) in its Flower context, which travels to and from a Ray worker with every
message (the table shows one such round trip for the node's number of sites): it grows with the sites
per node. And the simulation engine polls every node for messages, scanning every stored message each
time: it grows with nodes x messages, so one node per site is the slowest layout at 1000 sites.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import tempfile
import time
from pathlib import Path

from benchmarks._flower import flwr_run, local_flower
from benchmarks._isolate import ROOT

RESULTS = ROOT / "benchmarks" / "results"


def state_round_trip_s(repeats: int = 3) -> float:
    """Seconds for one site message's state work: load the organA site's state files, save the next round's.

    Site state lives in node-local files (clients/state.py), so the node's Flower context no longer grows
    with the number of sites it hosts; this is the per-message cost that replaced its round trip.
    """
    import torch

    from fl_medlego.clients.state import load_state, save_state
    from fl_medlego.config import parse_run_config
    from fl_medlego.kinds import SiteState
    from fl_medlego.lora import Adapter, Factors

    cfg = parse_run_config({})
    template = cfg.kind.template(cfg)
    width = next(iter(template.values()))[1]
    head = {"weight": torch.randn(11, width), "bias": torch.randn(11)}  # organA: 11 classes
    specialist = Adapter({name: Factors(torch.randn(o, 4), torch.rand(4), torch.randn(4, i))
                          for name, (o, i) in template.items()})
    with tempfile.TemporaryDirectory() as tmp:
        save_state(Path(tmp), "organa", 1, cfg.kind, SiteState(head, specialist, head))
        start = time.perf_counter()
        for r in range(repeats):
            state = load_state(Path(tmp), "organa", r + 1, cfg.kind, template)
            save_state(Path(tmp), "organa", r + 2, cfg.kind, state)
        return (time.perf_counter() - start) / repeats


def one(n: int, data_root: str, sites_per_node: int) -> dict:
    nodes = math.ceil(n / (sites_per_node or math.ceil(math.sqrt(n))))
    with tempfile.TemporaryDirectory() as tmp:
        config = (f"sites='organa:{n}' data.root='{data_root}' data.max-train=16 data.max-eval=8 num-rounds=1 "
                  f"train.local-epochs=1 lora.site-ranks='' output-dir='{tmp}/outputs'")
        with local_flower(Path(tmp)) as env:
            start = time.perf_counter()
            result = flwr_run(env, "many_sites", config, timeout_s=5400,
                              federation_config=f"num-supernodes={nodes} client-resources-num-cpus=1")
            total = time.perf_counter() - start
        status = result["run"].get("status")
        if status != "finished:completed":
            raise RuntimeError(f"{n} sites: run ended {status}: {result['log'][-2000:]}")
        (run_dir,) = Path(tmp, "outputs").iterdir()
        events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rounds = [e for e in events if e["event"] == "round"]
        return {"sites": n, "nodes": nodes, "round_s": rounds[-1]["seconds"],
                "per_site_s": round(rounds[-1]["seconds"] / n, 3),
                "server_peak_rss_mb": rounds[-1]["server_peak_rss_mb"], "run_wall_s": round(total, 1),
                "merged": sum(e["event"] == "train" for e in events),
                "state_round_trip_ms": round(1000 * state_round_trip_s(), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", required=True, help="folder with organamnist.npz (full MedMNIST)")
    parser.add_argument("--sites", default="10,100,1000")
    parser.add_argument("--sites-per-node", type=int, default=0,
                        help="sites hosted by one simulated node (0: about sqrt(sites); 1: one node per site)")
    args = parser.parse_args()
    rows = []
    for n in [int(s) for s in args.sites.split(",")]:
        rows.append(one(n, str(Path(args.data_root).resolve()), args.sites_per_node))
        print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "scale.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (t, m) = plt.subplots(1, 2, figsize=(10, 4))
    t.plot([r["sites"] for r in rows], [r["round_s"] for r in rows], marker="o")
    m.plot([r["sites"] for r in rows], [r["server_peak_rss_mb"] for r in rows], marker="o")
    for ax, label in ((t, "round time (s)"), (m, "ServerApp peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("simulated sites")
        ax.set_ylabel(label)
    fig.tight_layout()
    fig.savefig(RESULTS / "scale.png", dpi=120)


if __name__ == "__main__":
    main()
