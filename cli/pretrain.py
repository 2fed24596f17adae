"""`fl-medlego` commands for the offline foundation: pretrain a base, evaluate bases with the fixed protocol."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console

from fl_medlego.errors import UserError

from ._boundary import as_user_error

console = Console(soft_wrap=True)


def _threads(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def cmd_pretrain_base(args) -> int:
    from fl_medlego.device import resolve_precision
    from fl_medlego.pretrain import RECIPES, PretrainSettings, pretrain
    from fl_medlego.pretrain.runner import resolve_device

    if args.list:
        for recipe in RECIPES.values():
            console.print(f"[bold]{recipe.name}[/bold]: {recipe.summary}")
        return 0
    if not args.recipe or not args.output:
        raise UserError("pretrain-base needs --recipe and -o OUTPUT (or --list)")
    _threads(args)
    with as_user_error(ValueError):  # the settings' and the device's own checks of the options
        settings = PretrainSettings(args.recipe, args.steps, args.batch_size, args.seed, args.model,
                                    images=args.images)
        resolve_precision(args.precision, resolve_device(args.device))
    report = pretrain(settings, args.output, save_every=args.save_every, device=args.device, precision=args.precision)
    console.print(f"pretrained {args.recipe} for {args.steps} steps in {report['train_wall_s']} s "
                  f"-> {Path(args.output) / 'backbone.safetensors'} (use it as model.pretrained)")
    return 0


def cmd_evaluate_base(args) -> int:
    from rich.markdown import Markdown

    from fl_medlego.pretrain import ProtocolSettings, run_protocol, write_tables

    _threads(args)
    bases = {}
    for item in args.bases:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            raise UserError(f"base {item!r}: write NAME=PATH with PATH an existing .safetensors file")
        bases[name] = path
    settings = ProtocolSettings(args.data_root, args.max_train, args.seed,
                                tuple(args.tasks.split(",")) if args.tasks else ProtocolSettings.tasks, args.epochs)
    results = run_protocol(bases, settings, args.output, full_finetune=not args.no_full_finetune)
    paths = write_tables(results, args.output)
    console.print(Markdown(paths[0].read_text()))
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_ship_base(args) -> int:
    from fl_medlego.bases import bundled_base_path
    from fl_medlego.pretrain.card import ship_base

    candidates = dict(item.partition("=")[::2] for item in args.candidate or [])
    destination = Path(args.to) if args.to else bundled_base_path(args.model).with_suffix("")
    with as_user_error(ValueError):  # the card refuses a run or evaluation that does not match what was named
        next_steps = Path(args.next_steps).read_text() if args.next_steps else ""
        weights, card = ship_base(args.run_dir, args.eval, args.name, destination, candidates, next_steps)
    console.print(f"wrote {weights} and its card {card}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    pretrain = sub.add_parser("pretrain-base", help="pretrain the default ViT offline (formulas, noise, CC0 photos)")
    pretrain.add_argument("--recipe", help="a pretraining recipe (see --list; no default: needed unless --list)")
    pretrain.add_argument("-o", "--output", help="run folder; an unfinished run there is resumed (no default: "
                          "needed unless --list)")
    pretrain.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    pretrain.add_argument("--batch-size", type=int, default=256, help="images per step")
    pretrain.add_argument("--seed", type=int, default=0, help="random seed of the run")
    pretrain.add_argument("--model", default="vit_medmnist_28", help="backbone preset or timm name")
    pretrain.add_argument("--images", type=int, default=0, help="size of the generated set (0 = the recipe's)")
    pretrain.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    pretrain.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    pretrain.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (the GPU when there is one)")
    pretrain.add_argument("--precision", default="auto",
                          help="auto (bf16 autocast on a GPU that supports it, else float32), float32 or bf16")
    pretrain.add_argument("--list", action="store_true", help="list the recipes")
    pretrain.set_defaults(func=cmd_pretrain_base)

    evaluate = sub.add_parser("evaluate-base", help="the fixed protocol: LoRA specialists on 4 MedMNIST tasks per base")
    evaluate.add_argument("bases", nargs="*", help="NAME=PATH of each pretrained base (random init is always included)")
    evaluate.add_argument("--data-root", required=True,
                          help="folder with the MedMNIST .npz files ('bundled' for the sample)")
    evaluate.add_argument("-o", "--output", required=True, help="results folder; finished rows there are reused")
    evaluate.add_argument("--max-train", type=int, default=5000, help="cap on training images per task (0 = all)")
    evaluate.add_argument("--epochs", type=int, default=5, help="training epochs of each specialist")
    evaluate.add_argument("--seed", type=int, default=0, help="random seed of the protocol")
    evaluate.add_argument("--tasks", help="comma-separated subset of blood,breast,organa,pneumonia (default: all four)")
    evaluate.add_argument("--no-full-finetune", action="store_true", help="skip row (c), full fine-tuning")
    evaluate.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    evaluate.set_defaults(func=cmd_evaluate_base)

    ship = sub.add_parser("ship-base", help="(maintainers) copy a pretrained base into the package with its card")
    ship.add_argument("run_dir", help="the pretrain-base folder of the chosen run")
    ship.add_argument("--eval", required=True, help="the evaluate-base folder that scored it")
    ship.add_argument("--name", required=True, help="the base's name in that evaluation")
    ship.add_argument("--candidate", action="append", metavar="NAME=RUN",
                      help="every run tried: its folder or its pretrain.json, repeatable (default: none)")
    ship.add_argument("--next-steps", help="a Markdown file: limits and what to try next (default: no such section)")
    ship.add_argument("--model", default="vit_medmnist_28", help="the backbone preset the base is for")
    ship.add_argument("--to", help="destination path without suffix (default: the package's bundled base)")
    ship.set_defaults(func=cmd_ship_base)
