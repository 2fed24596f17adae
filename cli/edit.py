"""`fl-medlego edit`: add a site's adapter to, or remove it from, a saved Med-LEGO generalist, exactly."""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from fl_medlego.errors import UserError

from ._boundary import as_user_error

console = Console(soft_wrap=True)


def _named(text: str) -> tuple[str, str]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r} must look like SITE=ADAPTER_FOLDER")
    return name, folder


def _when(seconds) -> str:
    """An edit's time as the local date and time (the record keeps seconds since the epoch)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(seconds)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "(no time recorded)"


def _edit_line(edit: dict) -> str:
    op = edit.get("op", "?")
    if op == "create":
        what = f"merged {', '.join(edit.get('sites', []))}"
    elif op == "add":
        what = f"added {edit.get('site')} (weight {edit.get('weight', 1.0):g})"
    elif op == "remove":
        what = f"removed {edit.get('site')}"
    else:
        what = f"{op} {edit.get('site', '')}".strip()
    return f"  {_when(edit.get('time'))}  {what}"


def show_lines(generalist: str, assembly) -> list[str]:
    """The generalist's sites with their weights (as given, and their share of the merge) and its edits, dated."""
    total = assembly.total_weight
    how = ("uniform mean: each site's weight over their sum" if assembly.mean
           else "explicit weights: the merge is the weighted sum itself")
    lines = [f"{generalist}: {len(assembly.sites)} sites, exact sum of rank {assembly.total_rank()}; "
             f"energy {assembly.options.energy:g}, max rank {assembly.options.max_rank or 'none'} ({how})",
             "sites:"]
    for site, about in assembly.sites.items():
        weight = float(about["weight"])
        share = weight / total if assembly.mean and total else weight
        lines.append(f"  {site:<16} weight {weight:g} -> {share:.3f} of the merge; adapter "
                     f"{str(about.get('fingerprint', ''))[:12]}")
    lines.append(f"edits ({len(assembly.edits)}):")
    lines += [_edit_line(edit) for edit in assembly.edits]
    return lines


def cmd_edit(args: argparse.Namespace) -> int:
    from fl_medlego.assembly import Assembly, edit_generalist

    if args.show:
        with as_user_error():
            assembly = Assembly.load(args.generalist)
        for line in show_lines(args.generalist, assembly):
            console.print(line, markup=False)
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
