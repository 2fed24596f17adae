"""Scale: round time and server memory with 10 to 10,000 simulated sites (tiny shards).

    python -m benchmarks.scale --data-root PATH_TO_MEDMNIST [--sites 10,100,1000] [--repeats 3]
    python -m benchmarks.scale --data-root PATH_TO_MEDMNIST --sites 1000,10000 --max-nodes 32 --output scale_10k

Each run is one `flwr run scenarios/many_sites` round over N organA sites (16 training and 8 validation /
test images per site, each site's own draw from the whole split: `data.partition='sample'`; rank 4), on
about sqrt(N) simulated nodes of about sqrt(N) sites each (`--sites-per-node K` fixes K instead,
`--max-nodes M` caps the nodes). Round time and the ServerApp's peak RSS come from
the run's metrics.jsonl ("round" event; its "train" events mark the end of the training phase).
The sizes are run in turn, `--repeats` times (10, 100, 1000, 10, 100, 1000, ...), so that the
machine's drift falls on every size alike; the table gives each repetition and the medians.
Writes results/scale.csv (each run), scale_medians.csv and scale.png (`--output NAME` renames them).

Why sqrt(N): Flower 1.41's simulation engine polls every node for messages every 0.1 s and scans
every stored message each time, so its work grows with nodes x messages: one node per site is the
slowest layout at 1000 sites. Site state lives in node-local files (clients/state.py), so a node
hosting many sites costs nothing extra per message (the table shows one site's state round trip).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._isolate import ROOT, write_csv
from fl_medlego.cli.flower_run import flwr_run, local_flower
from fl_medlego.files import atomic_path
from fl_medlego.results import read_events

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
    template = cfg.kind_server().template()
    width = next(iter(template.values()))[1]
    head = {"weight": torch.randn(11, width), "bias": torch.randn(11)}  # organA: 11 classes
    specialist = Adapter({name: Factors(torch.randn(o, 4), torch.rand(4), torch.randn(4, i))
                          for name, (o, i) in template.items()})
    with tempfile.TemporaryDirectory() as tmp:
        save_state(Path(tmp), "organa", 1, cfg.kind_server(), SiteState(head, specialist, head))
        start = time.perf_counter()
        for r in range(repeats):
            state = load_state(Path(tmp), "organa", r + 1, cfg.kind_server(), template)
            save_state(Path(tmp), "organa", r + 2, cfg.kind_server(), state)
        return (time.perf_counter() - start) / repeats


def node_count(n: int, sites_per_node: int = 0, max_nodes: int = 0) -> int:
    """About sqrt(n) nodes (or n / sites_per_node), at most max_nodes (0: no cap)."""
    nodes = math.ceil(n / (sites_per_node or math.ceil(math.sqrt(n))))
    return min(nodes, max_nodes) if max_nodes else nodes


def one(n: int, data_root: str, sites_per_node: int, extra: str = "", max_nodes: int = 0) -> dict:
    nodes = node_count(n, sites_per_node, max_nodes)
    with tempfile.TemporaryDirectory() as tmp:
        # data.partition='sample': each site draws its own 16 / 8 / 8 images, so 10,000 sites all have a validation
        # and a test split (organA's 6,491 validation images split 10,000 ways would leave a third of them none).
        # The round's sites train on 2 cores one after the other: the default round-timeout (1800 s) cut a
        # 10,000-site round off before its last sites replied (0.38 s a site here). Allow 2 s a site.
        timeouts = f"round-timeout={max(1800, 2 * n)} node-wait-timeout={max(120, n // 10)} "
        config = (f"sites='organa:{n}' data.root='{data_root}' data.max-train=16 data.max-eval=8 num-rounds=1 "
                  "data.partition='sample' " + timeouts +
                  f"train.local-epochs=1 lora.site-ranks='' output-dir='{tmp}/outputs' {extra}").strip()
        with local_flower(Path(tmp)) as env:
            result = flwr_run(env, "many_sites", config, timeout_s=max(5400, 5 * n),
                              federation_config=f"num-supernodes={nodes} client-resources-num-cpus=1")
        status = result["run"].get("status")
        if status != "finished:completed":
            raise RuntimeError(f"{n} sites: run ended {status}: {result['log'][-2000:]}")
        (run_dir,) = Path(tmp, "outputs").iterdir()
        events = read_events(run_dir / "metrics.jsonl")
        rounds = [e for e in events if e["event"] == "round"]
        round_s = rounds[-1]["seconds"]
        # The round starts round_s before its "round" event; its first "train" event ends the training phase.
        round_start = rounds[-1]["time"] - round_s
        train_s = min(e["time"] for e in events if e["event"] == "train") - round_start
        return {"sites": n, "nodes": nodes, "round_s": round_s, "per_site_s": round(round_s / n, 4),
                "train_phase_per_site_s": round(train_s / n, 4),
                "evaluate_phase_per_site_s": round((round_s - train_s) / n, 4),
                "server_peak_rss_mb": rounds[-1]["server_peak_rss_mb"], "run_wall_s": round(result["seconds"], 1),
                "merged": sum(e["event"] == "train" for e in events),
                "state_round_trip_ms": round(1000 * state_round_trip_s(), 1)}


def medians(rows: list[dict]) -> list[dict]:
    """Per size: the median of each number over the repetitions, and the per-site cost's range."""
    out = []
    for n in sorted({r["sites"] for r in rows}):
        runs = [r for r in rows if r["sites"] == n]
        row = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k not in ("repeat", "sites", "nodes")}
        per_site = [r["per_site_s"] for r in runs]
        out.append({"sites": n, "nodes": runs[0]["nodes"], "repeats": len(runs), **row,
                    "per_site_min_s": min(per_site), "per_site_max_s": max(per_site)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", required=True, help="folder with organamnist.npz (full MedMNIST)")
    parser.add_argument("--sites", default="10,100,1000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run-config", default="", help="more overrides, e.g. \"messages-per-node=0\"")
    parser.add_argument("--output", default="scale", help="file names under benchmarks/results/: NAME.csv ...")
    parser.add_argument("--sites-per-node", type=int, default=0,
                        help="sites hosted by one simulated node (0: about sqrt(sites); 1: one node per site)")
    parser.add_argument("--max-nodes", type=int, default=0,
                        help="at most this many simulated nodes (0: no cap): Flower's scan for each node's next "
                             "message grows with nodes x stored messages, so a fixed number keeps it flat in N")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sites.split(",")]
    root, rows = str(Path(args.data_root).resolve()), []
    for repeat in range(1, args.repeats + 1):
        for n in sizes:
            rows.append({"repeat": repeat, **one(n, root, args.sites_per_node, args.run_config, args.max_nodes)})
            print(rows[-1], flush=True)
    summary = medians(rows)
    print("\n| sites | nodes | per-site round cost, median (min-max) (s) | training phase / site (s) "
          "| evaluation phase / site (s) | ServerApp peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for r in summary:
        print(f"| {r['sites']} | {r['nodes']} | {r['per_site_s']:.3f} ({r['per_site_min_s']:.3f}-"
              f"{r['per_site_max_s']:.3f}) | {r['train_phase_per_site_s']:.3f} | {r['evaluate_phase_per_site_s']:.3f} "
              f"| {r['server_peak_rss_mb']:.0f} |")
    by_size = {r["sites"]: r["per_site_s"] for r in summary}
    for small, large in ((100, 1000), (1000, 10000)):
        if small in by_size and large in by_size:
            print(f"\nper-site cost, {large} sites / {small} sites: {by_size[large] / by_size[small]:.3f} (medians)")
    write_csv(f"{args.output}.csv", rows)
    write_csv(f"{args.output}_medians.csv", summary)
    plot(summary, args.output)


def plot(summary: list[dict], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = [r["sites"] for r in summary]
    fig, (t, m) = plt.subplots(1, 2, figsize=(10, 4))
    per_site = [r["per_site_s"] for r in summary]
    spread = [[p - r["per_site_min_s"] for p, r in zip(per_site, summary)],
              [r["per_site_max_s"] - p for p, r in zip(per_site, summary)]]
    t.errorbar(sites, per_site, yerr=spread, marker="o", capsize=3)
    t.set_ylim(bottom=0)
    m.plot(sites, [r["server_peak_rss_mb"] for r in summary], marker="o")
    for ax, label in ((t, "per-site round cost (s), median and range"), (m, "ServerApp peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("simulated sites")
        ax.set_ylabel(label)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_path(RESULTS / f"{name}.png") as tmp:
        fig.savefig(tmp, dpi=120)


if __name__ == "__main__":
    main()
