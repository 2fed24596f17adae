"""Leakage audit: membership inference against what crosses the wire, with and without DP-SGD.

    python -m benchmarks.audit --data-root /path/to/medmnist [--sites blood,breast,organa,pneumonia]
        [--members 500] [--shadows 4] [--epsilon 8] [--others-train 1000] [--epochs 5] [--output audit.csv]

For each target site, its training images are shuffled (seeded, stratified by class) into candidates,
half of them members and half not with the same class mix, and a disjoint shadow pool. The target
specialist (an SVD-LoRA adapter and its head, one local training of --epochs epochs) trains on the
members only. The attacker holds (a) that specialist adapter, (b) the Med-LEGO merge of it with the
other sites' specialists, each with the target's head, and scores every candidate with the loss
threshold and with offline LiRA (shadow specialists trained on disjoint shadow-pool images, merged the
same way). Everything is done twice: plain training, and DP-SGD with budget (epsilon, delta = 1/(10 N)
at most 1e-5) spent in that one training, for every site (the other sites too). Writes
results/audit.csv (one row per site, model, privacy and attack: AUC, TPR at 1 % FPR, epsilon) and
results/audit.png (ROC curves, log-log).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._isolate import ROOT, write_csv
from fl_medlego.config import parse_run_config
from fl_medlego.data.sites import Split
from fl_medlego.files import atomic_path
from fl_medlego.privacy.audit import (
    attack_quality,
    audit_splits,
    lira_offline_scores,
    loss_attack_scores,
    per_example_outputs,
    roc_points,
)
from fl_medlego.privacy.coordinator import EPSILON_SPENT
from fl_medlego.privacy.site import train_from_base
from fl_medlego.site import load_site_data

RESULTS = ROOT / "benchmarks" / "results"
MODES = ("none", "dp-sgd")


def _subset(split: Split, index: np.ndarray) -> Split:
    index = torch.as_tensor(index)
    return Split(split.images[index], split.labels[index])


class Auditor:
    def __init__(self, args, mode: str) -> None:
        self.args, self.mode = args, mode
        self.cfg = parse_run_config({
            "sites": args.sites, "data.root": args.data_root, "data.max-eval": args.max_eval, "num-rounds": 1,
            "seed": args.seed, "privacy.mode": mode, "privacy.epsilon": args.epsilon,
            "train.local-epochs": args.epochs})
        self.kind, self.server = self.cfg.kind_site(), self.cfg.kind_server()  # the run kind's two halves
        self.others: dict[str, object] = {}  # site -> specialist adapter (the merge's other members)

    def train(self, data, train: Split):
        """A specialist on `train` (with DP-SGD in the private mode, as a private site's ClientApp trains)."""
        data = dataclasses.replace(data, train=train)
        result = train_from_base(self.cfg.privacy, self.cfg.num_rounds, self.kind, data)
        epsilon = result.metrics[EPSILON_SPENT] if self.cfg.privacy.private else float("nan")
        return result.update, result.state.head, epsilon

    def other_specialists(self) -> None:
        for site in self.cfg.site_names:
            data = load_site_data(self.cfg, site)
            count = min(self.args.others_train, len(data.train))
            self.others[site] = self.train(data, _subset(data.train, np.arange(count)))[0]

    def merged(self, site: str, adapter):
        rest = [self.others[s] for s in self.cfg.site_names if s != site]
        return self.server.combine([adapter, *rest], None, self.cfg.merge)

    def outputs(self, data, adapter, head, candidates: Split):
        model = self.kind.build_model(data, adapter, head)
        return per_example_outputs(model, candidates, data.task, model.image_size)

    def site(self, site: str) -> tuple[list[dict], dict]:
        data = load_site_data(self.cfg, site)
        parts = audit_splits(data.train.labels.numpy(), self.args.members, self.args.shadows, self.args.seed)
        candidates = _subset(data.train, np.concatenate([parts["members"], parts["non_members"]]))
        is_member = np.r_[np.ones(len(parts["members"])), np.zeros(len(parts["non_members"]))].astype(bool)
        target, head, epsilon = self.train(data, _subset(data.train, parts["members"]))
        shadows = [self.train(data, _subset(data.train, index))[:2] for index in parts["shadows"]]
        rows, curves = [], {}
        for model_name, build in (("specialist", lambda a: a), ("merged", lambda a: self.merged(site, a))):
            losses, confidence = self.outputs(data, build(target), head, candidates)
            shadow_conf = np.stack([self.outputs(data, build(a), h, candidates)[1] for a, h in shadows])
            for attack, scores in (("loss", loss_attack_scores(losses)),
                                   ("lira", lira_offline_scores(confidence, shadow_conf))):
                quality = attack_quality(scores, is_member)
                rows.append({"site": site, "model": model_name, "privacy": self.mode,
                             "epsilon": round(epsilon, 3) if self.mode != "none" else "",
                             "attack": attack, "auc": round(quality["auc"], 4),
                             "tpr_at_1pct_fpr": round(quality["tpr_at_fpr"], 4), "members": int(is_member.sum()),
                             "non_members": int((~is_member).sum()), "shadows": len(shadows)})
                curves[(model_name, attack)] = roc_points(scores, is_member)
        return rows, curves


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = sorted({k[0] for k in curves})
    fig, axes = plt.subplots(2, len(sites), figsize=(3.6 * len(sites), 7), squeeze=False)
    for col, site in enumerate(sites):
        for row, model_name in enumerate(("specialist", "merged")):
            ax = axes[row][col]
            for (s, mode, m, attack), (fpr, tpr) in sorted(curves.items()):
                if s == site and m == model_name:
                    ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=f"{attack}, {mode}",
                            linestyle="-" if mode == "none" else "--")
            ax.plot([1e-4, 1], [1e-4, 1], color="grey", linewidth=0.5)
            ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), title=f"{site}: {model_name}",
                   xlabel="false positive rate", ylabel="true positive rate")
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def markdown(rows: list[dict]) -> str:
    lines = ["| site | model | privacy | epsilon | attack | AUC | TPR at 1 % FPR |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['site']} | {r['model']} | {r['privacy']} | {r['epsilon'] or '-'} | {r['attack']} | {r['auc']:.3f} "
              f"| {r['tpr_at_1pct_fpr']:.3f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="a folder of MedMNIST .npz files ('bundled' for the sample)")
    parser.add_argument("--sites", default="blood,breast,organa,pneumonia")
    parser.add_argument("--members", type=int, default=500, help="member images per target (as many non-members)")
    parser.add_argument("--shadows", type=int, default=4, help="shadow specialists per target (LiRA)")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--others-train", type=int, default=1000, help="training images of the other specialists")
    parser.add_argument("--max-eval", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=5, help="local epochs of every training (5: the scenarios')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="audit.csv", help="file name under benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows, curves = [], {}
    for mode in MODES:
        started = time.perf_counter()
        auditor = Auditor(args, mode)
        auditor.other_specialists()
        for site in auditor.cfg.site_names:
            site_rows, site_curves = auditor.site(site)
            rows += site_rows
            curves |= {(site, mode, *key): value for key, value in site_curves.items()}
            print(markdown(site_rows), flush=True)
        print(f"privacy {mode}: {time.perf_counter() - started:.0f} s", flush=True)
    path = write_csv(args.output, rows)
    plot(curves, RESULTS / Path(args.output).with_suffix(".png").name)
    print(markdown(rows))
    print(f"wrote {path} and {Path(args.output).with_suffix('.png').name}")


if __name__ == "__main__":
    main()
