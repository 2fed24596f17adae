"""`fl-medlego edit`: add a site's adapter to, or remove it from, a saved Med-LEGO generalist, exactly."""

from __future__ import annotations

import argparse

from rich.console import Console

from fl_medlego.errors import UserError

from ._boundary import as_user_error

console = Console(soft_wrap=True)


def _named(text: str) -> tuple[str, str]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r} must look like SITE=ADAPTER_FOLDER")
    return name, folder


def cmd_edit(args: argparse.Namespace) -> int:
    from fl_medlego.assembly import Assembly, edit_generalist

    if args.show:
        with as_user_error():
            assembly = Assembly.load(args.generalist)
        console.print(f"{args.generalist}: {len(assembly.sites)} sites ({', '.join(assembly.sites)}), exact sum of "
                      f"rank {assembly.total_rank()}; {len(assembly.edits)} edits")
        for edit in assembly.edits:
            console.print(f"  {edit}")
        return 0
    if not args.add and not args.remove:
        raise UserError("edit needs --add SITE=FOLDER and/or --remove SITE=FOLDER (or --show)")
    weights = {name: args.weight for name, _ in args.add or []} if args.weight is not None else None
    # fl_medlego.assembly refuses an edit that does not fit the generalist with a ValueError: the user's edit
    with as_user_error(ValueError):
        merged = edit_generalist(args.generalist, dict(args.add or []), dict(args.remove or []), weights)
    ranks = sorted({f.rank for f in merged.factors.values()})
    console.print(f"edited {args.generalist}: sites {', '.join(merged.metadata['merge']['sites'])} "
                  f"(merged ranks {ranks})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    edit = sub.add_parser("edit", help="add or remove a site of a saved Med-LEGO generalist (exact, re-truncated)")
    edit.add_argument("generalist", help="a folder written by `fl-medlego merge --method medlego`")
    edit.add_argument("--add", type=_named, action="append", metavar="SITE=FOLDER",
                      help="a site's adapter to add, repeatable (default: none)")
    edit.add_argument("--remove", type=_named, action="append", metavar="SITE=FOLDER",
                      help="a site to remove, with the adapter it contributed (checked by fingerprint), repeatable "
                      "(default: none)")
    edit.add_argument("--weight", type=float, help="weight of the added sites (default 1 for a uniform mean; "
                      "needed when the generalist was merged with --weights)")
    edit.add_argument("--show", action="store_true", help="list the generalist's sites and edits")
    edit.set_defaults(func=cmd_edit)
