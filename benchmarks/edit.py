"""Removing a site from a Med-LEGO generalist: the low-rank assembly against re-merging densely.

    python -m benchmarks.edit                   # d = 768 and 4096, N = 16 and 64 sites of rank 4
    python -m benchmarks.edit --quick           # d = 768 only

One adapted d x d matrix, N sites of rank 4 (total rank R = 4N). `assembly` removes one site from the
kept exact sum (fl_medlego.assembly: one QR-core SVD of an (R + 4)-term sum, then the energy
truncation); `fresh` re-merges the N - 1 remaining sites with the QR core (needs every site's factors);
`dense` forms the d x d sum without the site and takes its full SVD (what a coordinator without the
low-rank form does). Each case runs in a fresh process (benchmarks._isolate); peak memory is that
process's RSS growth during the call. Writes results/edit.csv; the ratios compare runs of the same
case on the same machine, one after the other.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from benchmarks._isolate import measure, run_child, write_csv

ENERGY = 0.9
RANK = 4


def _sites(d: int, n: int, seed: int = 0):
    from fl_medlego.lora import Adapter, Factors

    g = torch.Generator().manual_seed(seed)
    return [Adapter({"m": Factors(torch.randn(d, RANK, generator=g) / math.sqrt(d), torch.rand(RANK, generator=g) + 0.1,
                                  torch.randn(RANK, d, generator=g) / math.sqrt(d))}) for _ in range(n)]


def _options():
    from fl_medlego.merging.medlego import MedLegoOptions

    return MedLegoOptions(energy=ENERGY, max_rank=None)


def remove_from_assembly(assembly, site: str, adapter):
    return assembly.remove(site, adapter).generalist()


def fresh_merge(rest):
    from fl_medlego.merging import merge_adapters

    return merge_adapters(rest, "medlego", options=_options())


def dense_remerge(rest):
    from fl_medlego.merging._lowrank import energy_rank

    D = sum((a.factors["m"].B.double() * a.factors["m"].E.double()) @ a.factors["m"].A.double() for a in rest)
    U, S, Vh = torch.linalg.svd(D / len(rest), full_matrices=False)
    k = energy_rank(S, ENERGY)
    return U[:, :k], S[:k], Vh[:k]


def child(case: dict) -> None:
    from fl_medlego.assembly import Assembly

    torch.set_num_threads(case["threads"])
    small = _sites(64, 3, seed=1)  # warm-up of the linear-algebra kernels on a tiny problem
    warm = Assembly.from_adapters({str(i): a for i, a in enumerate(small)}, options=_options())
    remove_from_assembly(warm, "0", small[0])
    dense_remerge(small[1:])
    sites = _sites(case["d"], case["n"])
    named = {str(i): a for i, a in enumerate(sites)}
    if case["method"] == "assembly":
        assembly = Assembly.from_adapters(named, options=_options())
        out = measure(remove_from_assembly, assembly, "0", sites[0])
    elif case["method"] == "fresh":
        out = measure(fresh_merge, sites[1:])
    else:
        out = measure(dense_remerge, sites[1:])
    print(json.dumps({"seconds": out["seconds"], "peak_mb": out["peak_mb"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    rows = []
    for d in (768,) if args.quick else (768, 4096):
        for n in (16, 64):
            row = {"d": d, "sites": n, "total_rank": RANK * n}
            for method in ("assembly", "fresh", "dense"):
                out = run_child("benchmarks.edit", {"d": d, "n": n, "method": method, "threads": args.threads})
                row[f"{method}_s"], row[f"{method}_mb"] = round(out["seconds"], 4), round(out["peak_mb"], 1)
            row["dense_over_assembly"] = round(row["dense_s"] / max(row["assembly_s"], 1e-9), 1)
            rows.append(row)
            print(row, flush=True)
    path = write_csv("edit.csv", rows)
    print("| d | N | R | assembly s | fresh s | dense s | dense / assembly | assembly MB | dense MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['d']} | {r['sites']} | {r['total_rank']} | {r['assembly_s']} | {r['fresh_s']} | {r['dense_s']} | "
              f"{r['dense_over_assembly']}x | {r['assembly_mb']} | {r['dense_mb']} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
