"""Code outside the kinds asks a kind for itself (its class, the registry's choice), never names one by string.

A companion of tests/test_layout.py's `test_site_kinds_are_decided_only_inside_the_kinds`, for the lookups."""

import re

from fl_medlego.cli.flower_run import REPO

CODE = [p for folder in ("fl_medlego", "clients", "server", "cli", "benchmarks") for p in (REPO / folder).rglob("*.py")]
BY_NAME = re.compile(r"\b(kind_site|kind_server|kind_context|get_kind)\(\s*['\"]")


def test_no_code_outside_the_kinds_looks_a_kind_up_by_a_literal_name():
    kinds = REPO / "fl_medlego" / "kinds"
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in CODE if kinds not in p.parents
                 for i, line in enumerate(p.read_text().splitlines(), 1) if BY_NAME.search(line)]
    assert not offenders, "a kind looked up by a literal name:\n" + "\n".join(offenders)
