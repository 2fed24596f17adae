"""`fl-medlego evaluate ADAPTER`: test ACC / AUC / F1 of a saved adapter (merged, edited or a site's own) on one
site's data.

An adapter carries no head (the classifier on top of the backbone), and a site's head was fitted to
that site's own adapter. By default a fresh head is trained for a few epochs on the site's training
split with the adapter frozen (the adapter is scored, not retrained); `--head FILE` uses a head the
site kept instead (its node-local state: `round-NNN/head.safetensors`, the head a run evaluates the
merged adapter with, or `specialist/specialist-head.safetensors`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from rich.console import Console

from fl_medlego.errors import UserError

from ._boundary import as_user_error

console = Console(soft_wrap=True)
HEAD_EPOCHS = 3  # enough for a linear head on frozen features to settle on the small sample sets


def read_site_adapter(folder: Path, server, context):
    """The adapter in `folder`, refused when it was made for other targets or another base than the scenario's
    (the checks of fl_medlego.lora.load_adapter), or when its matrices do not fit the scenario's model."""
    from fl_medlego import wire
    from fl_medlego.lora import load_adapter

    if not server.kind.saves_adapters:
        raise UserError(f"the scenario's sites (kind {server.kind.name!r}) do not train adapters: "
                        "`fl-medlego evaluate` scores adapter folders only")
    fingerprint = server.shared_base()[1]
    with as_user_error():
        adapter = load_adapter(folder, expect_lora=context.lora, expect_base=context.model_name,
                               expect_fingerprint=fingerprint)
    try:
        return server.decode(server.encode(adapter), server.template())
    except wire.InvalidUpdate as err:
        raise UserError(f"{folder} does not fit the scenario's model ({err}): evaluate it with the scenario it "
                        "was trained in") from err


def fitted_head(site_half, data, update, epochs: int, seed: int) -> dict | None:
    """A head trained for `epochs` on `update` frozen (None for a kind without a head, e.g. prompt scoring)."""
    from fl_medlego.seeds import training_seed
    from fl_medlego.train import fit

    model = site_half.build_model(data, update, None)
    if not site_half.head_state(model):
        return None
    for name, param in model.named_parameters():
        if not name.startswith("head."):
            param.requires_grad_(False)  # the adapter is what is scored: only the head learns
    train_cfg = dataclasses.replace(site_half.site_train_config(data), epochs=epochs, orth_weight=0.0)
    fit(model, data.train, data.val, data.task, model.image_size, train_cfg,
        draws_seed=training_seed(seed, data.site.name, 1), name=data.site.name)
    return site_half.head_state(model)


def score_adapter(run_config: dict, site: str, folder: Path, data_root: str | None = None,
                  head_file: Path | None = None, head_epochs: int = HEAD_EPOCHS, dataset: str | None = None
                  ) -> dict[str, float]:
    """Test metrics (wire names: acc, auc, f1, loss) of the adapter in `folder` on `site`'s test split."""
    from fl_medlego import wire
    from fl_medlego.config import parse_run_config
    from fl_medlego.files import read_tensors
    from fl_medlego.site import load_site_data

    cfg = parse_run_config(run_config)
    if site not in cfg.site_names:
        raise UserError(f"site {site!r} is not one of the scenario's sites ({', '.join(cfg.site_names)}): "
                        "pass --site with one of them")
    site_half, server = cfg.kind_site(), cfg.kind_server()
    update = read_site_adapter(Path(folder), server, cfg.kind_context())
    node_config = {wire.NODE_DATA_ROOT: data_root} if data_root else {}
    node_config |= {wire.NODE_DATASET: dataset} if dataset else {}
    data = load_site_data(cfg, site, node_config)
    if head_file is not None:
        with as_user_error(ValueError):
            head = read_tensors(head_file)
        try:
            return site_half.evaluate(data, update, head)
        except RuntimeError as err:  # load_state_dict: another site's head (other classes) or not a head
            raise UserError(f"{head_file} is not a head of site {site!r} ({str(err).splitlines()[0]}): pass "
                            "a head.safetensors from that site's state folder") from err
    return site_half.evaluate(data, update, fitted_head(site_half, data, update, head_epochs, cfg.seed))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fl_medlego.scenario import load_scenario_config

    if args.head_epochs < 1:
        raise UserError(f"--head-epochs must be at least 1, got {args.head_epochs}")
    with as_user_error(ValueError):  # reading the scenario and the --run-config text only
        run_config = load_scenario_config(args.scenario, args.run_config or "")
    metrics = score_adapter(run_config, args.site, Path(args.adapter), args.data_root,
                            Path(args.head) if args.head else None, args.head_epochs, args.dataset)
    head = (f"the head in {args.head}" if args.head
            else f"a head trained {args.head_epochs} epochs on the frozen adapter")
    console.print(f"{args.adapter} on site {args.site} (test split, {head}): "
                  + ", ".join(f"{label} {metrics[key]:.4f}" for key, label in
                              (("acc", "ACC"), ("auc", "AUC"), ("f1", "F1")) if key in metrics))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("evaluate", help="test ACC / AUC / F1 of a saved adapter (merged, edited or a site's) "
                              "on one site's data")
    evaluate.add_argument("adapter", help="an adapter folder (adapter_config.json + adapter_model.safetensors)")
    evaluate.add_argument("--scenario", required=True, help="the scenario the adapter was trained in, e.g. "
                          "scenarios/cross_domain (its base, targets and sites)")
    evaluate.add_argument("--site", required=True, help="the site whose test split scores it")
    evaluate.add_argument("--data-root", help="the folder with the site's data (default: the scenario's data.root)")
    evaluate.add_argument("--dataset", help="the site's own dataset, registered at this node (`fl-medlego site "
                          "data add`), as its SuperNode names it (default: none: the scenario's sites spec decides)")
    evaluate.add_argument("--run-config", help="overrides of the scenario's knobs, as for flwr run (default: none)")
    evaluate.add_argument("--head", help="a head the site kept (round-NNN/head.safetensors in its state folder) "
                          "instead of training one (default: train one)")
    evaluate.add_argument("--head-epochs", type=int, default=HEAD_EPOCHS,
                          help="epochs of the head trained on the frozen adapter (unless --head)")
    evaluate.set_defaults(func=cmd_evaluate)
