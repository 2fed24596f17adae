"""`fl-medlego site data add|list|check|remove`: a node's register of its own datasets; `fl-medlego data export`.

Everything here stays at the node: the register, the check's findings and the decoded cache are local files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

console = Console(soft_wrap=True)

TASK_WORDS = ("multi-class", "binary", "multi-label")


def _progress(label: str):
    """A tqdm bar for a first pass over a dataset (stderr), updated as (done, total) comes in."""
    from tqdm import tqdm

    bar: dict = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=label, unit="img", leave=False)
        bar["bar"].update(done - bar["bar"].n)
        if done >= total:
            bar["bar"].close()

    return update


def _check(record, listing=None, min_per_class: int = 2):
    from fl_medlego.data.own.check import check_dataset
    from fl_medlego.data.own.registry import describe, entries_of
    from fl_medlego.data.own.sources import Listing

    if listing is None:
        listing = describe(record.source, Path(record.path), record.task)
    listing = Listing(listing.source, listing.root, record.task, tuple(record.class_names),
                      tuple(entries_of(record)), listing.ignored)
    bar = _progress(f"checking {record.name}")
    total = len(record.files)
    return check_dataset(listing, [f.split for f in record.files], min_per_class=min_per_class, frame=record.frame,
                         progress=lambda done: bar(done, total))


def _print_report(report) -> None:
    for line in report.lines():
        console.print(line, highlight=False, markup=False)


def cmd_add(args: argparse.Namespace) -> int:
    from fl_medlego.data.own.registry import build_record, record_path, save_record
    from fl_medlego.data.own.sources import task_of
    from fl_medlego.data.own.splits import parse_fractions
    from fl_medlego.errors import UserError

    if record_path(args.name, args.registry).exists() and not args.replace:  # before any file is read
        raise UserError(f"a dataset named {args.name!r} is registered already: pick another name, or add --replace "
                        "to register it again")
    task = task_of(args.task) if args.task else None
    record, listing = build_record(args.name, args.source, args.path, task, parse_fractions(args.split), args.seed,
                                   args.frame, args.prompt_template)
    if not args.no_check:
        report = _check(record, listing)
        _print_report(report)
        if not report.ok:
            raise UserError(f"dataset {args.name!r} was not registered: fix the errors above and run this again "
                            "(nothing was written)")
    where = save_record(record, args.registry, replace=args.replace)
    counts = ", ".join(f"{split} {sum(by_class.values())}" for split, by_class in record.counts.items())
    console.print(f"registered {record.name}: {len(record.files)} images, {record.num_classes} classes "
                  f"({record.task}); {counts}; split {record.split_rule['from']} -> {where}")
    console.print(f"start the site's SuperNode with --node-config \"dataset='{record.name}'\" (or dataset = "
                  f"\"{record.name}\" in its site TOML)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fl_medlego.data.own.registry import list_names, load_record, registry_folder

    names = list_names(args.registry)
    if not names:
        console.print(f"no dataset registered in {registry_folder(args.registry)} (fl-medlego site data add ...)")
        return 0
    table = Table("name", "source", "task", "classes", "train", "val", "test", "path")
    for name in names:
        r = load_record(name, args.registry)
        sizes = [str(sum(r.counts[s].values())) for s in ("train", "val", "test")]
        table.add_row(r.name, r.source, r.task, str(r.num_classes), *sizes, r.path)
    console.print(table)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from fl_medlego.data.own.registry import load_record, verify
    from fl_medlego.errors import UserError

    record = load_record(args.name, args.registry)
    verify(record)
    report = _check(record, min_per_class=args.min_per_class)
    _print_report(report)
    if not report.ok:
        raise UserError(f"dataset {record.name}: errors found (above); the site must not train on it until they are "
                        "fixed (then run the check again)")
    console.print(f"dataset {record.name}: no errors ({len(record.files)} images)", highlight=False)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from fl_medlego.data.own.cache import decoded
    from fl_medlego.data.own.registry import load_record, verify

    record = load_record(args.name, args.registry)
    verify(record)
    cached = decoded(record, args.size, processes=args.processes, progress=_progress(f"decoding {record.name}"))
    console.print(f"dataset {record.name}: {len(cached.images)} images at {args.size} px in {cached.folder}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from fl_medlego.data.own.registry import remove_record

    where = remove_record(args.name, args.registry)
    console.print(f"removed the record {where} (the images themselves were not touched)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fl_medlego.data.own.export import export_medmnist

    manifest = export_medmnist(args.flag, Path(args.to), args.format, args.data_root)
    console.print(f"wrote {manifest} and its images; register it with `fl-medlego site data add NAME "
                  f"--source manifest --path {manifest}`")
    return 0


def add_commands(site: argparse._SubParsersAction, sub: argparse._SubParsersAction) -> None:
    """`site data ...` under the `site` command, and the top-level `data export`."""
    data = site.add_parser("data", help="this node's own datasets: register, list, check, remove").add_subparsers(
        dest="data_action", required=True)
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument("--registry", help="the register's folder (default: $FL_MEDLEGO_DATASETS, else "
                          "~/.local/share/fl-medlego/datasets)")
    add = data.add_parser("add", parents=[registry], help="register a folder, CSV manifest or datalist as a dataset")
    add.add_argument("name", help="the dataset's name, e.g. cxr (the SuperNode names it: dataset='cxr')")
    add.add_argument("--source", required=True, choices=("folder", "manifest", "datalist"),
                     help="folder: ROOT/<class>/<files> or ROOT/{train,val,test}/<class>/<files>; manifest: a CSV "
                          "with path and label (or one 0/1 column per finding), optional split and patient; "
                          "datalist: MONAI-style JSON")
    add.add_argument("--path", required=True, help="the folder, CSV or JSON")
    add.add_argument("--task", choices=TASK_WORDS, help="the task (default: from the data; 2 classes: binary)")
    add.add_argument("--split", default="0.7,0.1,0.2", help="train,val,test fractions when the data has no split "
                     "(made once, stratified by label, grouped by patient)")
    add.add_argument("--seed", type=int, default=0, help="seed of that split")
    add.add_argument("--frame", type=int, help="the frame (0-based) of multi-frame DICOM "
                     "files to use (no default: such files are refused)")
    add.add_argument("--prompt-template", default="", help="cross-modal sites: how a class name becomes a prompt, "
                     "with {} for the name, e.g. 'a chest x-ray showing {}.'")
    add.add_argument("--replace", action="store_true", help="register again over an existing record of that name")
    add.add_argument("--no-check", action="store_true", help="skip the data check (it decodes every file)")
    add.set_defaults(func=cmd_add)
    listing = data.add_parser("list", parents=[registry], help="the registered datasets")
    listing.set_defaults(func=cmd_list)
    check = data.add_parser("check", parents=[registry], help="check a registered dataset locally: unreadable "
                            "files, duplicates across splits, patients in two splits, small classes, ...")
    check.add_argument("name")
    check.add_argument("--min-per-class", type=int, default=2, help="fewer images of a class in a split warns")
    check.set_defaults(func=cmd_check)
    cache = data.add_parser("cache", parents=[registry], help="decode a dataset into the node's cache now, "
                            "instead of in the site's first round (a large dataset may take longer than a round)")
    cache.add_argument("name")
    cache.add_argument("--size", type=int, default=28, help="the model's input size (vit_medmnist_28: 28; "
                       "vit_base_patch16_224: 224)")
    cache.add_argument("--processes", type=int, default=1, help="processes decoding in parallel")
    cache.set_defaults(func=cmd_cache)
    remove = data.add_parser("remove", parents=[registry], help="forget a dataset (its images are not touched)")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_remove)

    data_cmd = sub.add_parser("data", help="MedMNIST sets as files").add_subparsers(dest="action", required=True)
    export = data_cmd.add_parser("export", help="write a MedMNIST set as image files plus a manifest.csv (with "
                                 "its split) and classes.txt: the same data as a hospital's own")
    export.add_argument("flag", help="a MedMNIST set, e.g. blood")
    export.add_argument("--to", required=True, help="the folder to write (must not exist, or be empty)")
    export.add_argument("--format", choices=("png", "dicom"), default="png", help="the image files' format")
    export.add_argument("--data-root", default="bundled", help="where the .npz is (as data.root)")
    export.set_defaults(func=cmd_export)
