"""What the README and the docs say about the code, checked against the code, so that the two cannot drift."""

import re
from pathlib import Path

import pytest
import torch

from fl_medlego.config import DEFAULTS
from fl_medlego.report import summary_markdown, summary_table
from fl_medlego.scenario import load_scenario_config
from fl_medlego.server.guard import capped_examples, check_combined

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table_after(text: str, marker: str) -> list[list[str]]:
    """The Markdown table that follows the first line containing `marker`, as rows of cells (no separator)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append(_cells(line))
        elif rows:
            break
    return [row for row in rows if not all(set(cell) <= set("-:") for cell in row)]


def _small_summary() -> dict:
    metrics = {"acc": 0.8, "auc": 0.9, "f1": 0.7, "loss": 0.5}
    return {"strategy": "medlego", "wall_time_s": 1.0, "mean_normalized_acc": 0.75,
            "sites": {"blood": {"specialist": metrics, "merged": {**metrics, "acc": 0.6}, "normalized_acc": 0.75}}}


def test_readme_example_table_has_the_columns_a_run_prints():
    example = _table_after(README, "The run ends with a table like this one")
    printed = _table_after(summary_markdown(_small_summary()), "Normalized ACC = merged ACC")
    assert example[0] == printed[0], "the README's example table header differs from summary.md's"
    assert example[0] == [column.header for column in summary_table(_small_summary()).columns]
    assert [len(row) for row in example] == [len(row) for row in printed]
    assert [row[0] for row in example[1:]] == ["blood", "mean"] == [row[0] for row in printed[1:]]


def _strategy_states() -> set[str]:
    """Every site state the strategy writes into summary.json's site_status, read from its code."""
    source = (ROOT / "server" / "strategy.py").read_text()
    return set(re.findall(r'"state":\s*"(\w+)"', source))


def test_readme_lists_exactly_the_site_states_the_strategy_writes():
    states = _strategy_states()
    assert {"merged", "rejected", "missing"} <= states  # the reading of the code found the writes
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if "`site_status`:" in line)
    listed = []
    for line in lines[start + 1:]:
        item = re.match(r"\s+- `(\w+)`: ", line)
        if item:
            listed.append(item.group(1))
        elif listed and not line.startswith("    "):  # the list ends with its last item's continuation lines
            break
    assert sorted(listed) == sorted(states), "README's site_status list vs the states server/strategy.py writes"
    files_row = next(line for line in lines if line.startswith("| `summary.md`"))
    assert all(re.search(rf"\b{state}\b", files_row) for state in states)


def test_readme_states_the_combined_update_threshold_the_guard_applies():
    factor = int(re.search(r"combined update whose norm is above (\d+) x the number\s+of sites combined", README)[1])
    kept, bound = 3, 2.0
    assert check_combined(factor * kept * bound * 0.999, kept, bound) is None
    assert check_combined(factor * kept * bound * 1.001, kept, bound) is not None


def test_readme_states_the_cap_on_claimed_example_counts():
    factor = int(re.search(r"example counts are capped at (\d+) x the lower median", README)[1])
    capped = capped_examples({"a": 100.0, "b": 100.0, "c": 1e6})
    assert capped == {"a": 100.0, "b": 100.0, "c": factor * 100.0}


def test_readme_names_every_setting_cross_domain_does_not_declare():
    declared = load_scenario_config(ROOT / "scenarios" / "cross_domain")
    elsewhere = sorted(set(DEFAULTS) - set(declared))
    groups = sorted({key.split(".")[0] for key in elsewhere})
    settings = README.split("## Settings", 1)[1].split("<!--", 1)[0]
    named = sorted(re.findall(r"`([\w-]+)\.\*`, declared in `scenarios/(\w+)/pyproject.toml`", settings))
    assert [group for group, _ in named] == groups, "a setting outside cross_domain's pyproject the README omits"
    for group, scenario in named:
        there = load_scenario_config(ROOT / "scenarios" / scenario)
        assert {k for k in elsewhere if k.startswith(group + ".")} <= set(there)


CROSS_MODAL = (ROOT / "docs" / "cross-modal.md").read_text()


def test_cross_modal_doc_counts_the_prompts_each_site_scores_against():
    from fl_medlego.crossmodal.prompts import site_prompts, supported_flags, vocabulary

    total = int(re.search(r"the (\d+) supported sets have (\d+) class\s+prompts", CROSS_MODAL)[2])
    assert int(re.search(r"the (\d+) supported sets", CROSS_MODAL)[1]) == len(supported_flags())
    for site, flag in {"blood": "bloodmnist", "breast": "breastmnist", "organA": "organamnist",
                       "pneumonia": "pneumoniamnist"}.items():
        own, others = map(int, re.search(rf"{site} (\d+) \+ (\d+)", CROSS_MODAL).groups())
        assert (own, others) == (len(site_prompts(flag)), len(vocabulary(flag)))
        assert own + others == total


def test_cross_modal_doc_states_the_update_size_on_the_wire():
    from fl_medlego.config import parse_run_config
    from fl_medlego.lora import Adapter
    from fl_medlego.lora.factors import Factors

    cfg = parse_run_config(load_scenario_config(ROOT / "scenarios" / "cross_modal"))
    template = cfg.kind_server().template()  # the site's rank only sizes B and A: the template's names and shapes
    sizes = {}
    for rank in (cfg.lora.rank, cfg.merge.options.max_rank):
        update = Adapter({name: Factors(torch.zeros(o, rank), torch.zeros(rank), torch.zeros(rank, i))
                          for name, (o, i) in template.items()})
        sizes[rank] = sum(t.numel() * t.element_size() for t in cfg.kind_server().encode(update).values())
    stated = re.search(r"at rank 4 and at rank 16:\s+([\d,]+) and ([\d,]+) bytes", CROSS_MODAL).groups()
    assert (cfg.lora.rank, cfg.merge.options.max_rank) == (4, 16)
    assert [int(s.replace(",", "")) for s in stated] == [sizes[4], sizes[16]]
    assert f"{sizes[16] / 1e6:.2f} MB" in CROSS_MODAL and f"{sizes[4] / 1e3:.0f} kB" in CROSS_MODAL


def test_results_doc_names_the_partition_the_in_domain_scaling_used():
    import json

    results = (ROOT / "docs" / "results.md").read_text()
    folder = ROOT / "docs" / "results" / "scaling_in_domain"
    used = {(r["settings"]["data"]["partition"], r["settings"]["data"]["dirichlet_alpha"])
            for r in (json.loads(p.read_text()) for p in folder.glob("*/results.json"))}
    assert used == {("dirichlet", 0.5)}
    assert re.search(r"pneumonia into N shards with Dirichlet label skew,\s+alpha 0\.5", results)


def test_results_doc_states_the_tolerance_the_reproduction_test_allows():
    results = (ROOT / "docs" / "results.md").read_text()
    tolerance = re.search(r"^TOLERANCE = (\S+)$", (ROOT / "tests" / "test_reproduce.py").read_text(), re.M)[1]
    stated = re.search(r"reproduces its stored summary within (\S+) on every metric", results)[1]
    assert float(stated) == float(tolerance)
    assert "to the last digit" not in results


def test_the_server_certificate_rotates_from_the_same_ca_as_deployment_md_says(tmp_path):
    from cryptography import x509

    from fl_medlego.cli import main
    from fl_medlego.errors import UserError
    from fl_medlego.security import issue_server_certificate

    deployment = (ROOT / "docs" / "deployment.md").read_text()
    assert "fl-medlego coordinator tls --ca tls/ --dir tls-2/" in deployment
    old, new = tmp_path / "tls", tmp_path / "tls-2"
    assert main(["coordinator", "tls", "--dir", str(old), "--host", "127.0.0.1"]) == 0
    assert main(["coordinator", "tls", "--ca", str(old), "--dir", str(new), "--host", "10.0.0.5",
                 "--host", "coordinator.example.org"]) == 0

    assert sorted(p.name for p in new.iterdir()) == ["ca.crt", "server.key", "server.pem"]  # no copy of ca.key
    assert (new / "ca.crt").read_bytes() == (old / "ca.crt").read_bytes()  # what the sites hold stays valid
    ca = x509.load_pem_x509_certificate((old / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((new / "server.pem").read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert sans.get_values_for_type(x509.DNSName) == ["coordinator.example.org"]
    assert (new / "server.pem").read_bytes() != (old / "server.pem").read_bytes()

    key_before = (new / "server.key").read_bytes()
    with pytest.raises(UserError, match="server.key exists"):
        issue_server_certificate(old, new, ["127.0.0.1"])
    assert (new / "server.key").read_bytes() == key_before
    assert main(["coordinator", "tls", "--ca", str(tmp_path / "nothing"), "--dir", str(tmp_path / "x"),
                 "--host", "127.0.0.1"]) == 2
    (tmp_path / "other").mkdir()
    other = main(["coordinator", "tls", "--dir", str(tmp_path / "other" / "tls"), "--host", "127.0.0.1"])
    assert other == 0
    (old / "ca.key").unlink()
    (old / "ca.key").write_bytes((tmp_path / "other" / "tls" / "ca.key").read_bytes())  # another CA's key
    with pytest.raises(UserError, match="not the key of ca.crt"):
        issue_server_certificate(old, tmp_path / "tls-3", ["127.0.0.1"])
