"""The `fl-medlego` command line."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fl_medlego.errors import UserError

from ._boundary import Parser, as_user_error, comma_list, installed_version, run_command

console = Console(soft_wrap=True)  # long paths in messages stay on one line


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"option {text!r} must look like key=value")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key.strip().replace("-", "_"), parsed


def cmd_merge(args: argparse.Namespace) -> int:
    from fl_medlego.merging import get_merge, list_merges
    from fl_medlego.offline_merge import merge_saved_adapters

    if args.list:
        table = Table(title="merge methods")
        table.add_column("name", no_wrap=True)
        table.add_column("options (defaults)")
        table.add_column("tuned by compare")
        table.add_column("what it does")
        for name in list_merges():
            m = get_merge(name)
            fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(m.options_type))
            space = getattr(m.options_type, "search_space", {})
            table.add_row(name, fields, ", ".join(f"{k} in {v}" for k, v in space.items()), m.summary)
        console.print(table)
        return 0
    if len(args.adapters) < 1 or not args.output:
        raise UserError("merge needs at least one adapter folder and -o OUTPUT (or --list)")
    options = dict(args.option or [])
    if args.energy is not None:
        options["energy"] = args.energy
    if args.max_rank is not None:
        options["max_rank"] = args.max_rank or None
    weights = args.weights
    named = [a.partition("=") for a in args.adapters]
    names = [n for n, sep, _ in named if sep] or None
    if names is not None and len(names) != len(named):
        raise UserError("name every adapter (SITE=FOLDER) or none")
    folders = [folder if sep else name for name, sep, folder in named]
    with as_user_error():
        merged = merge_saved_adapters(folders, args.output, args.method, weights, names=names, **options)
    ranks = sorted({f.rank for f in merged.factors.values()})
    console.print(f"merged {len(args.adapters)} adapters with {args.method} -> {args.output} "
                  f"({len(merged.factors)} matrices, ranks {ranks})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fl_medlego.cli.local_run import run_local_federation
    from fl_medlego.compare import Comparison, compared_strategies, print_whole, rich_table
    from fl_medlego.scenario import load_scenario_config

    with as_user_error(ValueError):  # reading the scenario and the --run-config text only
        run_config = load_scenario_config(args.scenario, args.run_config or "")
    strategies = args.strategies.split(",") if args.strategies else compared_strategies(run_config)
    seeds = args.seed_list or list(range(args.seeds))
    name = Path(args.scenario).resolve().name
    out = Path(args.output or Path("outputs") / f"compare-{name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    console.print(f"comparing {len(strategies)} strategies on {name}, seeds {seeds} -> {out}")
    rounds = tuple(args.rounds)
    energies = tuple(args.energy_sweep or ())
    results = Comparison(run_config, strategies, seeds, out, Path(args.cache).expanduser(), progress=True,
                         rounds=rounds, energies=energies, federate=run_local_federation).run()
    print_whole(console, rich_table(results))
    console.print(f"wrote {out / 'table.md'}, table.csv, table.png and results.json ({results['wall_time_s']} s)")
    return 0


def cmd_scaling(args: argparse.Namespace) -> int:
    from fl_medlego.compare import compared_strategies
    from fl_medlego.compare.scaling import run_scaling
    from fl_medlego.scenario import load_scenario_config

    with as_user_error(ValueError):  # reading the scenario and the --run-config text only
        run_config = load_scenario_config(args.scenario, args.run_config or "")
    strategies = args.strategies.split(",") if args.strategies else [
        s for s in compared_strategies(run_config) if s != "multitask"]
    seeds = list(range(args.seeds))
    sizes = args.sizes
    name = Path(args.scenario).resolve().name
    out = Path(args.output or Path("outputs") / f"scaling-{name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    console.print(f"scaling {len(strategies)} strategies on {name} over N = {sizes}, seeds {seeds} -> {out}")
    run_scaling(run_config, strategies, seeds, sizes, out, Path(args.cache).expanduser(), args.max_subsets,
                progress=True)
    console.print(f"wrote {out / 'scaling.csv'}, scaling.png and scaling.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fl_medlego.compare import render_comparison
    from fl_medlego.results import render_run

    run_dir = Path(args.run_dir)
    if (run_dir / "results.json").is_file():
        from fl_medlego.compare import print_whole, rich_table

        results = _read_json(run_dir / "results.json")
        paths = render_comparison(results, run_dir)
        print_whole(console, rich_table(results))
    elif (run_dir / "summary.json").is_file():
        from fl_medlego.report import summary_table

        summary = _read_json(run_dir / "summary.json")
        paths = render_run(run_dir, summary)
        console.print(summary_table(summary))
        for line in run_status_lines(summary):
            console.print(line, markup=False)
    else:
        raise UserError(f"{run_dir} holds neither results.json (a comparison) nor summary.json (a run)")
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}): the folder's run did not finish writing it") from err


def run_status_lines(summary: dict) -> list[str]:
    """The run's status, and where it did not complete, each site that was not merged with its reason."""
    status = str(summary.get("status") or "unknown (written before runs recorded their status)")
    lines = [f"status: {status}"]
    if status.startswith("completed"):
        return lines
    for site, about in sorted((summary.get("site_status") or {}).items()):
        if about.get("state") != "merged":
            reason = about.get("reason") or "no reason given"
            lines.append(f"  {site}: {about.get('state')} in round {about.get('round')}: {reason}")
    lines += [f"  {site}: no node hosted it" for site in summary.get("sites_missing") or []]
    return lines


def cmd_combine(args: argparse.Namespace) -> int:
    from fl_medlego.compare.combine import combine_folders

    with as_user_error():
        paths = combine_folders(args.parts, args.output)
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _named_folder(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=FOLDER, e.g. today=outputs/compare-both")
    return name, Path(folder)


def cmd_variants(args: argparse.Namespace) -> int:
    from fl_medlego.compare.variants import render_variants

    names = [name for name, _ in args.variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"variant names {repeated} are given twice: each NAME=FOLDER needs its own NAME")
    with as_user_error():
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
        pairs = [tuple(m.strip() for m in p.split(":")) for p in args.pairs.split(",") if p.strip()]
        if any(len(p) != 2 or not all(p) for p in pairs):
            raise UserError(f"--pairs {args.pairs!r}: give METRIC_A:METRIC_B pairs, comma-separated, "
                            "e.g. pooled-route-share:modality-share")
        paths = render_variants(dict(args.variants), args.baseline, Path(args.output), metrics, pairs)
    console.print(paths[0].read_text(), markup=False)
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from fl_medlego.config import setting_groups
    from fl_medlego.settings import describe, markdown_table

    if args.markdown:
        sys.stdout.write(markdown_table(setting_groups()))
        return 0
    table = Table(title="run config settings (flwr run --run-config \"key=value ...\")")
    for column in ("key", "type", "default", "allowed", "meaning"):
        table.add_column(column, no_wrap=column == "key")
    for row in describe(setting_groups()):
        table.add_row(row["key"], row["type"], row["default"], row["allowed"], row["help"])
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fl-medlego", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    merge = sub.add_parser("merge", help="merge saved adapters into one saved adapter (no data needed)")
    merge.add_argument("adapters", nargs="*", help="adapter folders (adapter_config.json + adapter_model.safetensors), "
                       "optionally SITE=FOLDER (medlego keeps the site names for `fl-medlego edit`)")
    merge.add_argument("-o", "--output", help="folder for the merged adapter (must not hold one already; no "
                       "default: needed unless --list)")
    merge.add_argument("--method", default="medlego", help="a registered merge method (see --list)")
    merge.add_argument("--energy", type=float, help="medlego: fraction v of singular-value mass to keep (default 0.9)")
    merge.add_argument("--max-rank", type=int, help="medlego: cap on the merged rank (default 16; 0 = none)")
    merge.add_argument("--weights", type=comma_list(float, "numbers"),
                       help="comma-separated site weights (default: uniform)")
    merge.add_argument("-O", "--option", type=_parse_option, action="append", metavar="KEY=VALUE",
                       help="any other option of the method, e.g. -O density=0.2 (default: the method's defaults)")
    merge.add_argument("--list", action="store_true", help="list the merge methods and their options")
    merge.set_defaults(func=cmd_merge)

    compare = sub.add_parser("compare", help="every strategy on the same specialists: Table 1 layout")
    compare.add_argument("scenario", help="a scenario folder, e.g. scenarios/cross_domain")
    compare.add_argument("--seeds", type=int, default=5, help="repeat with seeds 0..N-1: mean ± std and the "
                         "paired test against Med-LEGO (default %(default)s as published; 1 for a quick look)")
    compare.add_argument("--seed-list", type=comma_list(int, "integers"),
                         help="explicit comma-separated seeds instead of --seeds (default: seeds 0..N-1 of --seeds)")
    compare.add_argument("--strategies", help="comma-separated subset (default: every strategy + multitask)")
    compare.add_argument("--run-config", help="overrides of the scenario's knobs, as for flwr run (default: "
                         "none, the scenario's own values)")
    compare.add_argument("--rounds", default="1", type=comma_list(int, "integers"),
                         help="comma-separated round counts: 1 = the one-shot merge of the "
                         "specialists (the paper's setting), R > 1 = R federated rounds, sites continuing from the "
                         "merge (row 'STRATEGY (R rounds)'), e.g. 1,3")
    compare.add_argument("--energy-sweep", type=comma_list(float, "numbers"),
                         help="Med-LEGO at fixed thresholds v (no tuning, no rank cap), e.g. 0.5,0.7,0.8,0.9,0.95,1: "
                         "rows 'medlego (v=..., fixed)' and energy_sweep.png (default: no sweep)")
    compare.add_argument("-o", "--output", help="output folder (default: outputs/compare-SCENARIO-TIME)")
    compare.add_argument("--cache", default="~/.cache/fl-medlego/specialists",
                         help="where trained specialists are kept for reuse (default: %(default)s)")
    compare.set_defaults(func=cmd_compare)

    combine = sub.add_parser("combine", help="one comparison from several folders (e.g. seeds run in parallel)")
    combine.add_argument("parts", nargs="+", help="comparison folders (results.json)")
    combine.add_argument("-o", "--output", required=True, help="folder for the combined comparison")
    combine.set_defaults(func=cmd_combine)

    variants = sub.add_parser("variants", help="comparisons run with different settings, paired by seed")
    variants.add_argument("variants", nargs="+", type=_named_folder, help="NAME=FOLDER of a `compare -o FOLDER`, "
                          "one per variant (same sites and seeds, settings differing)")
    variants.add_argument("--baseline", required=True, help="the NAME the others are paired with (no default)")
    variants.add_argument("-o", "--output", required=True, help="folder for variants.md and variants.csv "
                          "(no default)")
    variants.add_argument("--metrics", default="", help="comma-separated result metrics to compare, each paired "
                          "(default: modality-share, union-acc, acc and auc; e.g. pooled-route-share,ensemble-acc)")
    variants.add_argument("--pairs", default="", help="METRIC_A:METRIC_B,...: two metrics of the same runs against "
                          "each other, paired by seed (e.g. pooled-route-share:modality-share)")
    variants.set_defaults(func=cmd_variants)

    scaling = sub.add_parser("scaling", help="mean normalized ACC against the number of specialists, every strategy")
    scaling.add_argument("scenario", help="cross_domain (subsets of its modalities) or in_domain (one modality "
                         "split N ways)")
    scaling.add_argument("--sizes", default="2,3,4", type=comma_list(int, "integers"),
                         help="the numbers of sites N (default %(default)s)")
    scaling.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..N-1")
    scaling.add_argument("--strategies", help="comma-separated (default: every strategy of the kind)")
    scaling.add_argument("--max-subsets", type=int, default=6, help="subsets of N sites compared per N, at most")
    scaling.add_argument("--run-config", help="overrides of the scenario's knobs, as for flwr run (default: "
                         "none, the scenario's own values)")
    scaling.add_argument("-o", "--output", help="output folder (default: outputs/scaling-SCENARIO-TIME)")
    scaling.add_argument("--cache", default="~/.cache/fl-medlego/specialists",
                         help="where trained specialists are kept for reuse")
    scaling.set_defaults(func=cmd_scaling)

    report = sub.add_parser("report", help="re-render the tables and figures of a run or comparison folder, and "
                            "print its table (a run's also its status, and each site's reason when it failed)")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)

    settings = sub.add_parser("settings", help="every run config setting: key, type, default, allowed values, help")
    settings.add_argument("--markdown", action="store_true", help="as the README's Markdown table")
    settings.set_defaults(func=cmd_settings)

    from . import deploy, edit, evaluate, pretrain

    deploy.add_commands(sub)
    edit.add_commands(sub)
    evaluate.add_commands(sub)
    pretrain.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return run_command(lambda: args.func(args), console)


if __name__ == "__main__":
    sys.exit(main())
