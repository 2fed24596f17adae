"""The fixed evaluation protocol for a pretrained base.

For every base and every task (blood, breast, organa, pneumonia): an SVD-LoRA specialist with the
project's default settings (rank 4 on the Q and V rows of attn.qkv, 5 epochs, lr 0.01) plus its head,
trained on the task's training set (capped at `max_train` images for CPU budgets), the epoch kept by
the full validation set, scored on the full test set. Beside them: (a) the random-init base with the same
adapters, (c) full fine-tuning of every weight from the random init, and the MedMNIST v2 ResNet-18 (28 px)
reference. Results are kept per (base, mode, task) in `results.json`, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import parse_run_config
from ..files import write_json_atomic
from ..kinds import get_kind
from ..site import load_site_data

log = logging.getLogger(__name__)

TASKS = ("blood", "breast", "organa", "pneumonia")
# MedMNIST v2 (Yang et al., Scientific Data 2023), ResNet-18 at 28 px, test ACC.
RESNET18_28_ACC = {"blood": 0.958, "breast": 0.863, "organa": 0.935, "pneumonia": 0.854}
RANDOM_INIT = "none"


@dataclass(frozen=True)
class ProtocolSettings:
    data_root: str
    max_train: int = 5000  # 0 = every training image
    seed: int = 0
    tasks: tuple[str, ...] = TASKS
    epochs: int = 5


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_config(pretrained: str, task: str, settings: ProtocolSettings):
    return parse_run_config({"sites": task, "model.pretrained": pretrained, "data.root": settings.data_root,
                             "data.max-train": settings.max_train, "seed": settings.seed,
                             "train.local-epochs": settings.epochs})


MODE_KINDS = {"lora": "adapter", "full": "full"}  # the protocol's row names -> the site kind that trains them


def evaluate_one(pretrained: str, task: str, mode: str, settings: ProtocolSettings) -> dict:
    """Test metrics of one task on one base: `mode` "lora" (adapter + head) or "full" (every weight)."""
    cfg = _run_config(pretrained, task, settings)
    data = load_site_data(cfg, task)
    start = time.perf_counter()
    if mode not in MODE_KINDS:
        raise ValueError(f"evaluation mode must be one of {sorted(MODE_KINDS)}, got {mode!r}")
    site = cfg.kind_site(get_kind(MODE_KINDS[mode]).name)
    trained = site.train(data, None, None)
    metrics = site.evaluate(data, trained.update, trained.state.head)
    return {**metrics, "train_images": len(data.train), "test_images": len(data.test),
            "wall_s": round(time.perf_counter() - start, 1)}


def protocol_identity(settings: ProtocolSettings) -> dict:
    """The settings that make results comparable. The data folder is not one: the same files may live
    anywhere (and a results file must not carry a machine's paths); only bundled sample vs. files counts."""
    identity = {k: v for k, v in asdict(settings).items() if k != "data_root"}
    return {**identity, "data": "bundled sample" if settings.data_root == "bundled" else "MedMNIST files",
            "tasks": list(settings.tasks)}


def run_protocol(bases: dict[str, str], settings: ProtocolSettings, out_dir: str | Path,
                 full_finetune: bool = True) -> dict:
    """Evaluate every base (name -> checkpoint path; the random init is always included) on every task.

    Returns and writes `results.json`: settings, each base's file hash, and rows keyed "name/mode/task".
    Bases scored there earlier keep their rows, so a new candidate is added without the old files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    wanted_settings = protocol_identity(settings)
    if saved and saved.get("settings") != wanted_settings:
        raise ValueError(f"{path} was made with other protocol settings ({saved.get('settings')}); "
                         "use another output folder")
    bases = {"random-init": RANDOM_INIT, **bases}
    hashes = {name: (file_sha256(p) if p != RANDOM_INIT else RANDOM_INIT) for name, p in bases.items()}
    results = {"settings": wanted_settings, "bases": {**saved.get("bases", {}), **hashes},
               "rows": saved.get("rows", {})}
    jobs = [(name, "lora", task) for name in bases for task in settings.tasks]
    if full_finetune:
        jobs += [("random-init", "full", task) for task in settings.tasks]
    for name, mode, task in jobs:
        key = f"{name}/{mode}/{task}"
        row = results["rows"].get(key)
        if row is not None and row.get("base_sha256") == hashes[name]:
            continue
        log.info("evaluating %s", key)
        row = {**evaluate_one(bases[name], task, mode, settings), "base_sha256": hashes[name]}
        results["rows"][key] = row
        log.info("%s: test ACC %.4f AUC %.4f (%.0f s)", key, row["acc"], row["auc"], row["wall_s"])
        write_json_atomic(path, results)
    write_json_atomic(path, results)
    return results
