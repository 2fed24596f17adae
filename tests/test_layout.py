"""The boundaries of the layout, checked on the source: the wire spelled once, the library below the apps,
site kinds decided only inside the kind registry."""

import ast
import re
from pathlib import Path

import pytest

from fl_medlego import wire

REPO = Path(__file__).resolve().parents[1]
CODE = [p for folder in ("fl_medlego", "clients", "server", "cli", "benchmarks") for p in (REPO / folder).rglob("*.py")]
WIRE = REPO / "fl_medlego" / "wire.py"


def wire_names() -> set[str]:
    """Every record key, metric name and node-config key the wire module defines."""
    names = set()
    for name, value in vars(wire).items():
        if name.isupper() and isinstance(value, str):
            names.add(value)
        elif name.isupper() and isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            names.update(value)
    return names - {wire.SPECIALIST_PREFIX}


def _is_record_access(node: ast.Constant, parents: dict) -> bool:
    """A plain-word string used as a key: x["site"], x.get("site"), "site" in x, or a dict key of a record."""
    parent = parents.get(node)
    if isinstance(parent, ast.Subscript) and parent.slice is node:
        return True
    if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute) and parent.func.attr == "get":
        return bool(parent.args) and parent.args[0] is node
    if isinstance(parent, ast.Compare) and parent.left is node and isinstance(parent.ops[0], (ast.In, ast.NotIn)):
        return True
    if isinstance(parent, ast.Dict) and node in parent.keys:
        call = parents.get(parent)
        return isinstance(call, ast.Call) and getattr(call.func, "id", "") in {
            "ConfigRecord", "MetricRecord", "RecordDict", "ArrayRecord", "Context"}
    return False


# Where messages are built and read: plain-word names used as keys here are wire names. Elsewhere words
# such as "sites" or "acc" also name summary fields, so only the hyphenated wire names are looked for.
SPEAKS_THE_WIRE = (REPO / "clients", REPO / "server", REPO / "fl_medlego" / "kinds")


def literal_uses(path: Path, names: set[str], plain_words: bool | None = None) -> list[str]:
    if plain_words is None:
        plain_words = any(folder in path.parents for folder in SPEAKS_THE_WIRE)
    tree = ast.parse(path.read_text())
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            if parents.get(node).__class__ is ast.Expr:
                continue  # a docstring
            # Hyphenated names (val-acc, data-root, ...) are wire names wherever they appear; plain words
            # (site, sites, arrays, ...) only where they are used as keys.
            if "-" in node.value or (plain_words and _is_record_access(node, parents)):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    return found


def test_the_wire_names_are_spelled_only_in_the_wire_module():
    names = wire_names()
    assert {"val-acc", "train-loss", "best-epoch", "test-acc", "num-examples", "site", "data-root",
            "partition-id", "num-partitions"} <= names
    found = [hit for path in CODE if path != WIRE for hit in literal_uses(path, names)]
    assert not found, "use the fl_medlego.wire constants instead of these literals:\n" + "\n".join(found)


def test_the_literal_check_can_fail(tmp_path, monkeypatch):
    sample = tmp_path / "sample.py"
    sample.write_text('"""site"""\nx = metrics["val-acc"]\ny = config.get("site")\nz = "site-info" in m\nw = "site"\n')
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    hits = literal_uses(sample, wire_names(), plain_words=True)
    assert [h.split(": ", 1)[1] for h in hits] == ["'val-acc'", "'site'", "'site-info'"]
    assert [h.split(": ", 1)[1] for h in literal_uses(sample, wire_names(), plain_words=False)] == [
        "'val-acc'", "'site-info'"]


def imports_of(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text())
    package = ".".join(("fl_medlego", *path.relative_to(REPO / "fl_medlego").parent.parts))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_the_library_does_not_import_the_apps_or_the_command_line():
    offenders = []
    for path in (REPO / "fl_medlego").rglob("*.py"):
        bad = sorted(m for m in imports_of(path) if re.match(r"fl_medlego\.(clients|server|cli)(\.|$)", m))
        if bad:
            offenders.append(f"{path.relative_to(REPO)}: {bad}")
    assert not offenders, "the library must stay below clients/, server/ and cli/:\n" + "\n".join(offenders)


def test_the_library_does_not_import_flower():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "fl_medlego").rglob("*.py")
                 if any(m == "flwr" or m.startswith("flwr.") for m in imports_of(p))]
    assert not offenders


# A kind's flags are read inside the kinds alone; whether DP-SGD can wrap a kind's training, by the privacy layer.
KIND_FLAGS = [r"\bneeds_reference\b", r"\bkeeps_reference\b", r"\bchosen_explicitly\b", r"\bzero_shot\b",
              r"\bREFERENCE_KIND\b", r"\bspecialist_label\b", r"\bsupports_privacy\b"]


@pytest.mark.parametrize("pattern", [r"['\"]vit_avg['\"]", r"kind(_name)?\s*==", r"\.name\s*==\s*['\"](full|adapter)",
                                     r"\b(kind_site|kind_server|kind_context|get_kind)\(\s*['\"]", *KIND_FLAGS])
def test_site_kinds_are_decided_only_inside_the_kinds(pattern):
    kinds = REPO / "fl_medlego" / "kinds"
    allowed = {REPO / "fl_medlego" / "privacy" / "site.py"} if "supports_privacy" in pattern else set()
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in CODE if kinds not in p.parents and p not in allowed
                 for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert not offenders, f"kind-specific checks outside fl_medlego/kinds ({pattern}):\n" + "\n".join(offenders)


def test_the_kinds_import_nothing_from_the_run_config():
    """Kinds take a narrow KindContext (built in config.py), never the RunConfig: no cycle at the type level."""
    offenders = [f"{p.relative_to(REPO)}: {sorted(bad)}" for p in (REPO / "fl_medlego" / "kinds").rglob("*.py")
                 if (bad := {m for m in imports_of(p) if re.match(r"fl_medlego\.config(\.|$)", m)})]
    assert not offenders, "fl_medlego/kinds must not import fl_medlego.config:\n" + "\n".join(offenders)


def test_the_shared_modules_name_no_kinds_metric():
    """wire, replies, the run report and the comparison table iterate over what the kinds declare."""
    from fl_medlego.crossmodal import metrics

    own = set(metrics.GENERALIST_METRICS) | {metrics.UNSEEN_PREFIX, metrics.CENTRED_PREFIX}
    shared = [REPO / "fl_medlego" / "wire.py", REPO / "server" / "replies.py", REPO / "fl_medlego" / "report.py",
              REPO / "fl_medlego" / "compare" / "table.py"]
    found = [hit for path in shared for hit in literal_uses(path, own, plain_words=False)]
    found += [f"{p.relative_to(REPO)}: imports {m}" for p in shared for m in imports_of_any(p) if "crossmodal" in m]
    assert not found, "a kind's metric named in a shared module:\n" + "\n".join(found)


def imports_of_any(path: Path) -> set[str]:
    """Module names a file imports, wherever it lies (the apps' relative imports are left as written)."""
    tree = ast.parse(path.read_text())
    return {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


@pytest.mark.parametrize("path", ["dryrun/tls/ca.crt", "tls/server.key", "keys/blood_key", "keys/blood_key.pub"])
def test_the_runbooks_key_folders_are_never_committed(path):
    import subprocess

    checked = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
    assert checked.returncode == 0, f"{path} is not git-ignored"


def test_benchmarks_import_nothing_from_the_tests():
    test_modules = {p.stem for p in (REPO / "tests").glob("*.py")}
    offenders = []
    for path in (REPO / "benchmarks").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                  and n.level == 0}
        if names & test_modules or re.search(r"sys\.path.*tests", path.read_text()):
            offenders.append(f"{path.relative_to(REPO)}: {sorted(names & test_modules)}")
    assert not offenders, "benchmarks must not depend on the test suite:\n" + "\n".join(offenders)


def combine_uses(source: str) -> list[int]:
    """Lines that call or take a `.combine` of anything (`kind.combine(`, `server.combine(`, `f = x.combine`): only
    a kind's server half has that method, whatever the variable holding it is called."""
    return sorted({node.lineno for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.Attribute) and node.attr == "combine"})


def test_the_combine_finder_sees_every_spelling():
    source = "a = self.kind.combine(u, w, m)\nb = server.combine(u, None, m)\nf = cfg.kind_server().combine\n"
    assert combine_uses(source) == [1, 2, 3]
    assert combine_uses("from x import combine_folders\ncombined = _combine(a)\n") == []


# Where a kind's server half may combine: the strategy's round, compare's one-shot rows (they merge specialists,
# which is no round), the membership audit's one-shot merge, and the kinds themselves.
COMBINE_ALLOWED = {REPO / "server" / "strategy.py", REPO / "fl_medlego" / "compare" / "run.py",
                   REPO / "benchmarks" / "audit.py"}


def test_the_round_is_combined_in_the_strategy_alone():
    """One round loop: only the coordinator's strategy combines the sites' updates of a round (compare's
    one-shot rows merge specialists, which is no round; its federated rows run the real apps)."""
    running = [p for p in CODE if p not in COMBINE_ALLOWED and "kinds" not in p.relative_to(REPO).parts]
    offenders = [f"{p.relative_to(REPO)}:{line}" for p in running for line in combine_uses(p.read_text())]
    assert not offenders, "a round combined outside the strategy:\n" + "\n".join(offenders)
