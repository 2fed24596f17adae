"""Read a scenario's run config (its pyproject's [tool.flwr.app.config]) outside Flower, with overrides.

`fl-medlego compare` uses the same declared knobs and the same `key=value` override syntax as
`flwr run --run-config`, so a comparison and a federated run of a scenario share their settings.
"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path


def _flatten(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def parse_overrides(text: str) -> dict:
    """`"num-rounds=5 sites='blood,breast'"` -> {"num-rounds": 5, "sites": "blood,breast"} (TOML values)."""
    overrides = {}
    for item in shlex.split(text or "", posix=False):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise ValueError(f"override {item!r}: {value!r} is not a TOML value (quote strings: key='text')") from None
    return overrides


def load_scenario_config(scenario: str | Path, overrides: str = "") -> dict:
    """The scenario's declared run config with overrides applied; undeclared keys are an error."""
    path = Path(scenario)
    pyproject = path / "pyproject.toml" if path.is_dir() else path
    if not pyproject.is_file():
        raise FileNotFoundError(f"{pyproject} not found: pass a scenario folder such as scenarios/cross_domain")
    declared = _flatten(tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"])
    extra = parse_overrides(overrides)
    unknown = sorted(set(extra) - set(declared))
    if unknown:
        raise ValueError(f"override key(s) {unknown} are not declared in {pyproject}")
    return {**declared, **extra}
