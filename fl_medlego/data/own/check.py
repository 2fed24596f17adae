"""The local check of a hospital's dataset before it trains: every file opened, nothing sent anywhere.

Errors stop a dataset from being used as it is: files that do not decode, the same image (byte for byte) or
the same patient in two splits (the test set would leak into training), no training or test images.
Warnings are worth a look but may be right: a class with very few images in a split, the same image twice in
one split, mixed sizes or channels, a class imbalance, hidden files that were skipped. Every finding says
what to do about it.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .sources import MULTI_LABEL, DataSourceError, Listing, resolve_inside
from .splits import SPLITS

SHOWN = 20  # names listed in one finding before "and N more"
IMBALANCE = 10.0  # largest / smallest class in train above this is worth a warning


@dataclass(frozen=True)
class Finding:
    """One thing the check found: its level ("error" | "warning"), what, the detail and the fix."""

    level: str
    what: str
    detail: str
    fix: str


@dataclass
class CheckReport:
    """The findings and what the check counted: images per split and class (multi-label: positives per finding),
    images per size ("HxW") and per channel count, and the relative paths that did not decode."""

    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    channels: dict[int, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing stops the dataset from being used (warnings allowed)."""
        return not any(f.level == "error" for f in self.findings)

    def lines(self) -> list[str]:
        """The report as text: the findings (errors first), then the counts."""
        out = []
        for level in ("error", "warning"):
            for f in self.findings:
                if f.level == level:
                    out.append(f"{level.upper()}: {f.what}: {f.detail}. Fix: {f.fix}")
        for split, classes in self.counts.items():
            total = sum(classes.values())
            out.append(f"{split}: {total} images ({', '.join(f'{c} {n}' for c, n in classes.items())})")
        if self.sizes:
            out.append("sizes: " + ", ".join(f"{s} {n}" for s, n in sorted(self.sizes.items(), key=lambda t: -t[1])))
        if self.channels:
            out.append("channels: " + ", ".join(f"{_channel_word(c)} {n}" for c, n in sorted(self.channels.items())))
        out.append("OK: the dataset can be used" if self.ok else "NOT OK: fix the errors above")
        return out


def _channel_word(channels: int) -> str:
    return {1: "grey", 3: "colour"}.get(channels, f"{channels}-channel")


def _count(n: int, one: str, many: str) -> str:
    """'1 file does' / '3 files do': a count with its noun (and verb) agreeing."""
    return f"{n} {one if n == 1 else many}"


def _shown(names: Sequence[str]) -> str:
    """Up to SHOWN names, then how many more."""
    text = ", ".join(names[:SHOWN])
    return text + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _read(listing: Listing, path: str, frame: int | None) -> tuple[str | None, tuple[int, ...] | None, str]:
    """A file's content hash (None if unreadable), its decoded shape (None if it does not decode) and why not."""
    from .decode import REEXPORT, UnreadableImage, read_pixels

    try:
        real = resolve_inside(listing.root, path)
        digest = hashlib.sha256(real.read_bytes()).hexdigest()
    except (DataSourceError, OSError) as err:
        return None, None, str(err)
    try:
        return digest, tuple(read_pixels(real, frame=frame, label=path).shape), ""
    except UnreadableImage as err:  # its own fix where it has one (a frame to choose, a decoder to install)
        return digest, None, err.reason + ("" if err.fix == REEXPORT else f"; {err.fix}")
    except Exception as err:  # a corrupt file can fail inside any decoder in its own way: report it, never stop
        return digest, None, f"{type(err).__name__}: {err}"


def check_dataset(listing: Listing, splits: Sequence[str], min_per_class: int = 2, frame: int | None = None,
                  progress: Callable[[int], None] | None = None) -> CheckReport:
    """Open and hash every file of `listing` (its split in `splits`, one per entry) and report what is wrong.

    `frame` picks one frame of multi-frame files (as training will); `progress(n)` is called after each file."""
    if len(splits) != len(listing.entries):
        raise ValueError(f"{len(splits)} splits for {len(listing.entries)} entries")
    report = CheckReport()
    multi_label = listing.task == MULTI_LABEL
    counts = {s: dict.fromkeys(listing.class_names, 0) for s in SPLITS}
    hashes: dict[str, list[tuple[str, str]]] = defaultdict(list)  # content -> (path, split)
    patients: dict[str, set[str]] = defaultdict(set)
    sizes: Counter[str] = Counter()
    channels: Counter[int] = Counter()
    reasons: list[str] = []
    for n, (entry, split) in enumerate(zip(listing.entries, splits), start=1):
        for index, value in enumerate(entry.labels if multi_label else (1,)):
            name = listing.class_names[index if multi_label else entry.labels[0]]
            counts[split][name] += int(value)
        if entry.patient is not None:
            patients[entry.patient].add(split)
        digest, shape, reason = _read(listing, entry.path, frame)
        if digest is not None:
            hashes[digest].append((entry.path, split))
        if shape is None:
            report.unreadable.append(entry.path)
            reasons.append(f"{entry.path} ({reason})")
        else:
            sizes[f"{shape[0]}x{shape[1]}"] += 1
            channels[shape[2] if len(shape) == 3 else 1] += 1
        if progress is not None:
            progress(n)
    used = [s for s in SPLITS if s in set(splits)]
    report.counts = {s: counts[s] for s in used}
    report.sizes, report.channels = dict(sizes), dict(channels)
    add = report.findings.append
    if reasons:
        add(Finding("error", _count(len(reasons), "file does", "files do") + " not decode", _shown(reasons),
                    "replace or remove them (a truncated copy, a wrong extension or an unsupported format)"))
    for split in ("train", "test"):
        if split not in used:
            add(Finding("error", f"no {split} images", f"the {split} split is empty",
                        "add images to it, or register the dataset again with a larger share for it"))
    _duplicates(hashes, add)
    mixed = sorted(p for p, s in patients.items() if len(s) > 1)
    if mixed:
        add(Finding("error", _count(len(mixed), "patient", "patients") + " in two splits",
                    _shown([f"{p} ({', '.join(s for s in SPLITS if s in patients[p])})" for p in mixed]),
                    "keep each patient's images in one split (fix the split column, or let the splits be drawn)"))
    _warnings(report, listing, used, min_per_class, multi_label, add)
    return report


def _duplicates(hashes: dict[str, list[tuple[str, str]]], add: Callable[[Finding], None]) -> None:
    """Identical files: across splits an error (one pair per split it leaks into), within one a warning."""
    across, within = [], []
    for copies in hashes.values():
        first: dict[str, str] = {}
        for path, split in copies:
            if split in first:
                within.append(f"{first[split]} = {path} ({split})")
            else:
                first[split] = path
        (split0, path0), *others = first.items()
        across.extend(f"{path0} ({split0}) = {path} ({split})" for split, path in others)
    if across:
        add(Finding("error", _count(len(across), "image is", "images are") + " in two splits", _shown(across),
                    "remove one copy of each, so that no test image is also trained on"))
    if within:
        add(Finding("warning", _count(len(within), "image appears", "images appear") + " twice in one split",
                    _shown(within),
                    "remove the copies unless they are meant to weigh double"))


def _warnings(report: CheckReport, listing: Listing, used: list[str], min_per_class: int, multi_label: bool,
              add: Callable[[Finding], None]) -> None:
    for split in used:
        few = [f"{c} {n}" for c, n in report.counts[split].items() if n < min_per_class]
        if few:
            what = "findings with few positives" if multi_label else "classes with few images"
            add(Finding("warning", f"{split}: {what} (under {min_per_class})", _shown(few),
                        f"add images of these classes to {split}, or accept a noisy estimate for them"))
    if len(report.sizes) > 1:
        add(Finding("warning", "images of different sizes",
                    ", ".join(f"{s} {n}" for s, n in sorted(report.sizes.items(), key=lambda t: -t[1])),
                    "nothing needed if that is expected: every image is resized to the model's input; "
                    "check that the rare sizes are the images you meant"))
    if len(report.channels) > 1:
        add(Finding("warning", "grey and colour images mixed",
                    ", ".join(f"{_channel_word(c)} {n}" for c, n in sorted(report.channels.items())),
                    "check that the odd ones are not another modality; all are converted to one channel count"))
    train = {c: n for c, n in report.counts.get("train", {}).items() if n > 0}
    if not multi_label and len(train) > 1 and max(train.values()) / min(train.values()) > IMBALANCE:
        big, small = max(train, key=train.get), min(train, key=train.get)  # type: ignore[arg-type]
        add(Finding("warning", "class imbalance in train",
                    f"{big} has {train[big]} images, {small} {train[small]} "
                    f"(ratio {train[big] / train[small]:.0f}:1)",
                    "weight the loss by class (train.class-balance=loss), or add images of the small classes"))
    if listing.ignored:
        add(Finding("warning", _count(len(listing.ignored), "hidden file", "hidden files") + " skipped",
                    _shown(list(listing.ignored)),
                    "nothing needed; remove them if they are not meant to be there"))
