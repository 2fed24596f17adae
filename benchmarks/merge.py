"""Merge benchmark: the project's `medlego` merge (QR core) vs. the dense path vs. PEFT's svd combination.

    python -m benchmarks.merge            # the full grid (about 90 minutes on 2 cores; --resume continues one)
    python -m benchmarks.merge --quick    # d = 768 with up to 64 sites, and the d = 4096, N = 16, r = 8 target

Dense path = what PEFT's add_weighted_adapter(..., "svd") and FusionBench do: form the d x d update,
full SVD, truncate. Every case runs in a fresh process (time, peak extra RSS). Relative error of the
merged update against the float64 dense reference is measured where the dense reference fits; both
are truncated by the same rule (energy ENERGY, rank cap MAX_RANK), so that the error is the QR core's
and not a difference of truncation. Writes benchmarks/results/merge.csv and merge.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys

import torch

from benchmarks._isolate import ROOT, measure, run_child
from fl_medlego.files import atomic_path, write_json_atomic

RESULTS = ROOT / "benchmarks" / "results"
ENERGY = 0.9
# Uncapped, like the dense reference (Med-LEGO's default caps the merged rank at 16: against an uncapped
# reference every case with R > 16 would show the cap, 0.4-0.9, not the merge's error). The cap only
# picks how many of the core's singular triplets to keep, so the timings are those of the capped merge.
MAX_RANK = None
# A float64 SVD of 8192 x 8192 takes many minutes here: the dense path stops at 4096 (and at N <= 16 there:
# its cost is the d x d SVD, whatever N).
DENSE_LIMIT_D = 4096
FACTOR_BYTES_LIMIT = 3 * 2**30  # stacked float64 factors above this are not run (memory of this machine)


def make_factors(d: int, ranks: list[int], seed: int = 0):
    from fl_medlego.lora import Factors

    g = torch.Generator().manual_seed(seed)
    return [Factors(torch.randn(d, r, generator=g) / math.sqrt(d), torch.rand(r, generator=g) + 0.1,
                    torch.randn(r, d, generator=g) / math.sqrt(d)) for r in ranks]


def medlego_merge(factors):
    from fl_medlego.merging import get_merge
    from fl_medlego.merging.medlego import MedLegoOptions

    n = len(factors)
    options = MedLegoOptions(ENERGY, max_rank=MAX_RANK)
    return get_merge("medlego").fn(factors, torch.full((n,), 1.0 / n, dtype=torch.float64), options)


def dense_merge(factors):
    """Form the update, full SVD, truncate by the same rule as the merge (float64, as a careful reference)."""
    from fl_medlego.merging._lowrank import energy_rank

    D = sum((f.B.double() * f.E.double()) @ f.A.double() for f in factors) / len(factors)
    U, S, Vh = torch.linalg.svd(D, full_matrices=False)
    k = energy_rank(S, ENERGY, MAX_RANK)
    return U[:, :k], S[:k], Vh[:k]


def peft_merge(factors):
    """PEFT's own svd combination on a one-layer model holding the sites' adapters."""
    sys.path.insert(0, str(__import__("pathlib").Path.home() / ".cache" / "fl-medlego" / "peft-lib"))
    from peft import LoraConfig, get_peft_model

    d = factors[0].B.shape[0]
    model = torch.nn.Sequential(torch.nn.Linear(d, d, bias=False))
    ranks = [f.rank for f in factors]
    peft_model = get_peft_model(model, LoraConfig(r=ranks[0], lora_alpha=ranks[0], target_modules=["0"]), "s0")
    for i, f in enumerate(factors):
        name = f"s{i}"
        if i:
            peft_model.add_adapter(name, LoraConfig(r=f.rank, lora_alpha=f.rank, target_modules=["0"]))
        layer = peft_model.base_model.model[0]
        layer.lora_A[name].weight.data = f.A.clone()
        layer.lora_B[name].weight.data = (f.B * f.E).clone()
    names = [f"s{i}" for i in range(len(factors))]
    result = measure(peft_model.add_weighted_adapter, names, [1.0 / len(factors)] * len(factors), "merged", "svd",
                     max(ranks))
    return result


def vit_b_sites(n: int):
    """n site adapters of ViT-B/16's shapes (Q and V of 12 blocks, 768 x 768), rank 4, float32."""
    from fl_medlego.config import parse_run_config
    from fl_medlego.lora import Adapter, Factors
    cfg = parse_run_config({"model.name": "vit_base_patch16_224"})
    template = cfg.kind_server().template()
    g = torch.Generator().manual_seed(0)
    return [Adapter({name: Factors(torch.randn(o, 4, generator=g) / 28, torch.rand(4, generator=g),
                                   torch.randn(4, i, generator=g) / 28) for name, (o, i) in template.items()},
                    scale=2.0) for _ in range(n)]


def merge_many(adapters):
    from fl_medlego.merging import merge_adapters

    return merge_adapters(adapters, "medlego", energy=ENERGY)


def child(case: dict) -> None:
    torch.set_num_threads(case.get("threads", 2))
    if case["method"] == "vit_b":
        merge_many(vit_b_sites(2))  # warm-up
        out = measure(merge_many, vit_b_sites(case["n"]))
        print(json.dumps({"seconds": out["seconds"], "peak_mb": out["peak_mb"]}))
        return
    # Warm up: load the linear-algebra kernels on a tiny problem so the measure is the merge alone.
    medlego_merge(make_factors(64, [2, 2], seed=1))
    dense_merge(make_factors(64, [2, 2], seed=1))
    factors = make_factors(case["d"], case["ranks"])
    if case["method"] == "peft":
        out = peft_merge(factors)
    else:
        out = measure(medlego_merge if case["method"] == "medlego" else dense_merge, factors)
    print(json.dumps({"seconds": out["seconds"], "peak_mb": out["peak_mb"]}))


def relative_error(d: int, ranks: list[int]) -> float:
    factors = make_factors(d, ranks)
    merged = medlego_merge(factors)
    U, S, Vh = dense_merge([type(f)(f.B.double(), f.E.double(), f.A.double()) for f in factors])
    if merged.rank != S.numel():
        raise RuntimeError(f"the merge kept rank {merged.rank}, the reference {S.numel()}: not like with like")
    reference = (U * S) @ Vh
    return float(torch.linalg.norm(merged.delta().double() - reference) / torch.linalg.norm(reference))


def cases(quick: bool) -> list[dict]:
    grid = []
    if quick:  # d = 768 with few sites, and the target case
        return [{"d": 768, "n": n, "rank": str(r), "ranks": [r] * n} for n in (2, 16, 64) for r in (4, 16)] + [
            {"d": 4096, "n": 16, "rank": "8", "ranks": [8] * 16}]
    for d in (768, 4096, 8192):
        for n in (2, 16, 64, 256, 1024):
            patterns = {f"{r}": [r] * n for r in (4, 16, 64)}
            patterns["mixed 4/8/16"] = [(4, 8, 16)[i % 3] for i in range(n)]
            if d == 4096 and n == 16:
                patterns["8"] = [8] * n  # the target case
            for label, ranks in patterns.items():
                grid.append({"d": d, "n": n, "rank": label, "ranks": ranks})
    return grid


def many_sites(n: int, threads: int) -> None:
    many = run_child("benchmarks.merge", {"method": "vit_b", "n": n, "threads": threads})
    dense_gb = n * 24 * 768 * 768 * 4 / 2**30
    print(f"medlego, {n} ViT-B/16 rank-4 adapters (24 matrices of 768 x 768): "
          f"{many['seconds']:.2f} s, peak extra memory {many['peak_mb']:.0f} MB "
          f"(their dense updates would take {dense_gb:.0f} GiB)", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "merge_vit_b.json", {"sites": n, "threads": threads, **many,
                                                     "dense_updates_gib": dense_gb})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--peft", action="store_true", help="also time PEFT's svd combination (needs peft)")
    parser.add_argument("--vit-b-sites", type=int, default=1000, help="sites in the ViT-B/16 many-site case")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every measured process")
    parser.add_argument("--skip-vit-b", action="store_true", help="leave out the 1000-site ViT-B/16 case")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of benchmarks/results/merge.csv and measure only the cases it lacks")
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    torch.set_num_threads(args.threads)
    if not args.skip_vit_b:
        many_sites(args.vit_b_sites, args.threads)
    rows = read_rows() if args.resume else []
    done = {(row["d"], row["n"], row["rank"]) for row in rows}
    for case in cases(args.quick):
        if (case["d"], case["n"], case["rank"]) in done:
            continue
        case["threads"] = args.threads
        d, R = case["d"], sum(case["ranks"])
        row = {"d": d, "n": case["n"], "rank": case["rank"], "R": R}
        # In the dense regime (R >= d) the merge accumulates the sum chunk by chunk: its memory is the matrix's.
        if R < d and 8 * 2 * d * R > FACTOR_BYTES_LIMIT:
            row["note"] = f"skipped: stacked factors need {16 * d * R / 2**30:.1f} GiB"
            rows.append(row)
            print(row, flush=True)
            continue
        ours = run_child("benchmarks.merge", {**case, "method": "medlego"})
        row.update(medlego_s=ours["seconds"], medlego_mb=ours["peak_mb"])
        if d < DENSE_LIMIT_D or (d == DENSE_LIMIT_D and case["n"] <= 16):
            dense = run_child("benchmarks.merge", {**case, "method": "dense"})
            row.update(dense_s=dense["seconds"], dense_mb=dense["peak_mb"], speedup=dense["seconds"] / ours["seconds"],
                       rel_error=relative_error(d, case["ranks"]))
            if args.peft and case["n"] <= 64:
                peft = run_child("benchmarks.merge", {**case, "method": "peft"})
                row.update(peft_s=peft["seconds"], peft_mb=peft["peak_mb"])
        else:
            row["note"] = f"dense path not run at d={d}, N={case['n']} (see DENSE_LIMIT_D)"
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        write(rows)  # after every case: an interrupted grid keeps what it measured (and --resume goes on from it)


def read_rows() -> list[dict]:
    """The rows of an earlier (possibly interrupted) grid, numbers parsed back, empty cells dropped."""
    path = RESULTS / "merge.csv"
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {key: value for key, value in raw.items() if value != ""}
            for key in row:
                if key in ("d", "n", "R"):
                    row[key] = int(row[key])
                elif key not in ("rank", "note"):
                    row[key] = float(row[key])
            rows.append(row)
    return rows


def write(rows: list[dict]) -> None:
    order = {(c["d"], c["n"], c["rank"]): i for i, c in enumerate(cases(quick=False))}
    rows.sort(key=lambda row: order.get((row["d"], row["n"], row["rank"]), len(order)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    fields = ["d", "n", "rank", "R", "medlego_s", "dense_s", "peft_s", "speedup", "medlego_mb", "dense_mb",
              "peft_mb", "rel_error", "note"]
    with atomic_path(RESULTS / "merge.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "medlego_s" in r]
    fig, (t, m) = plt.subplots(1, 2, figsize=(11, 4))
    for d in sorted({r["d"] for r in done}):
        sel = [r for r in done if r["d"] == d]
        t.scatter([r["R"] for r in sel], [r["medlego_s"] for r in sel], label=f"medlego d={d}", marker="o")
        dense = [r for r in sel if "dense_s" in r]
        if dense:
            t.scatter([r["R"] for r in dense], [r["dense_s"] for r in dense], label=f"dense d={d}", marker="x")
        m.scatter([d * r["R"] for r in sel], [max(r["medlego_mb"], 0.1) for r in sel], label=f"medlego d={d}")
        if dense:
            m.scatter([d * d for r in dense], [max(r["dense_mb"], 0.1) for r in dense], marker="x",
                      label=f"dense d={d} (at d^2)")
    for ax in (t, m):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    t.set_xlabel("stacked rank R = sum of site ranks")
    t.set_ylabel("seconds")
    m.set_xlabel("d * R (medlego) or d^2 (dense)")
    m.set_ylabel("peak extra memory (MB)")
    fig.tight_layout()
    with atomic_path(RESULTS / "merge.png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
