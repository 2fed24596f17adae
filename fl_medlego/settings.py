"""Settings declared once, as dataclass field metadata, and read generically from the flat run config.

A group of settings is a dataclass with a `PREFIX` ("train.", "lora.", "" for the run's own) whose
fields are declared with `setting(default, help, ...)`, as PEFT's configs carry `metadata={"help": ...}`:

    @dataclass(frozen=True)
    class GuardSettings:
        PREFIX: ClassVar[str] = "guard."
        max_norm: float = setting(0.0, "an absolute bound on an update's norm (0 = none)", low=0)

The key a user types is the prefix and the field's name in kebab case (`guard.max-norm`), unless the
declaration names another. `parse_group` reads one group from the flat dict: types from the annotations
(int, float, str, bool, tuple[str, ...], tuple[int, ...]), ranges and choices from the declaration,
and a refused value is one `ConfigError` line with the key, the value, what is allowed and an example.
`group_table` is the flat view back (what a user would type), and `describe` feeds `fl-medlego settings`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, UserError

_METADATA = "setting"


@dataclass(frozen=True)
class Declaration:
    """What a field's metadata says about the setting (see `setting`)."""

    help: str
    key: str | None = None  # the full key, when it is not PREFIX + the field's name in kebab case
    choices: tuple | None = None
    low: float | None = None  # inclusive bounds
    high: float | None = None
    above: float | None = None  # exclusive bounds
    below: float | None = None
    nonempty: bool = False  # a list that must name at least one item
    check: Callable[[Any], None] | None = None  # a further check of the value; raises ValueError saying why
    parse: Callable[[str], Any] | None = None  # text -> a value of a type of its own (the sites, say)
    show: Callable[[Any], str] | None = None  # and back, as a user writes it
    accepts: str | None = None  # what it accepts in words, where a check decides it

    def allowed(self) -> str:
        """What the setting accepts, in words ("", when any value of its type is)."""
        if self.accepts is not None:
            return self.accepts
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        parts = [f">= {_num(self.low)}" if self.low is not None else "",
                 f"> {_num(self.above)}" if self.above is not None else "",
                 f"<= {_num(self.high)}" if self.high is not None else "",
                 f"< {_num(self.below)}" if self.below is not None else ""]
        return " and ".join(p for p in parts if p)


def setting(default: Any, help: str, *, key: str | None = None, choices: tuple | None = None,
            low: float | None = None, high: float | None = None, above: float | None = None,
            below: float | None = None, nonempty: bool = False, check: Callable[[Any], None] | None = None,
            parse: Callable[[str], Any] | None = None, show: Callable[[Any], str] | None = None,
            accepts: str | None = None) -> Any:
    """A dataclass field declaring one setting: its default, help text, and what values it accepts.

    low / high are inclusive bounds, above / below exclusive ones; for a list they bound each item.
    A setting of a type of its own is given as text: `parse` reads it (the default too), `show` writes it.
    `accepts` says in words what a `check` accepts (for the listing).
    """
    declaration = Declaration(help, key, tuple(choices) if choices is not None else None, low, high, above, below,
                              nonempty, check, parse, show, accepts)
    metadata = {_METADATA: declaration, "help": help}
    if parse is None:
        return field(default=default, metadata=metadata)
    return field(default_factory=lambda: parse(default), metadata=metadata)


@dataclass(frozen=True)
class Setting:
    """One declared setting of a group: its key, field, type and declaration."""

    key: str
    name: str  # the dataclass field
    type: Any
    default: Any
    declaration: Declaration

    @property
    def type_name(self) -> str:
        if self.declaration.parse is not None:
            return "text"
        return _TYPE_NAMES.get(self.type, "list of text" if self.type == tuple[str, ...] else "list of integers")

    def shown(self, value: Any) -> Any:
        """The value as a user writes it in a run config (lists as comma-separated text)."""
        if self.declaration.show is not None:
            return self.declaration.show(value)
        return ",".join(str(v) for v in value) if isinstance(value, tuple) else value


_TYPE_NAMES = {int: "integer", float: "number", str: "text", bool: "true or false"}
_TYPES = (int, float, str, bool, tuple[str, ...], tuple[int, ...])


@functools.cache
def settings_of(group: type) -> tuple[Setting, ...]:
    """The declared settings of a group dataclass, in field order (fields without a declaration are not settings)."""
    hints = typing.get_type_hints(group)
    prefix = getattr(group, "PREFIX", "")
    found = []
    for f in dataclasses.fields(group):
        declaration = f.metadata.get(_METADATA)
        if declaration is None:
            continue
        kind = hints[f.name]
        if kind not in _TYPES and declaration.parse is None:
            raise TypeError(f"{group.__name__}.{f.name}: a setting is one of {_TYPES}, not {kind}")
        key = declaration.key or prefix + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        found.append(Setting(key, f.name, kind, default, declaration))
    return tuple(found)


def parse_group(group: type, flat: dict, **extra: Any) -> Any:
    """The group's settings from a flat run config (missing keys keep their defaults), plus `extra` fields."""
    values = {s.name: parse_value(s, flat[s.key]) for s in settings_of(group) if s.key in flat}
    try:
        return group(**values, **extra)
    except UserError:
        raise
    except ValueError as err:  # a check over several fields, in the group's __post_init__
        raise ConfigError(str(err)) from None


def parse_value(s: Setting, value: Any) -> Any:
    """One value converted to the setting's type and checked against its declaration."""
    converted = _convert(s, value)
    check_value(s, converted, given=value)
    return converted


def check_value(s: Setting, value: Any, given: Any = None) -> None:
    """Raise ConfigError naming the key when `value` (already of the setting's type) is not allowed;
    the message quotes `given`, the value as the user wrote it, when there is one."""
    d = s.declaration
    shown = value if given is None else given
    items = value if isinstance(value, tuple) else (value,)
    if d.nonempty and not items:
        _refuse(s, shown, f"{s.key} must name at least one item")
    for item in items:
        if d.choices is not None and item not in d.choices:
            _refuse(s, shown, f"{s.key} must be {d.allowed()}")
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not _in_range(d, item):
            _refuse(s, shown, f"{s.key} must be {_range_words(d)}")
    if d.check is not None:
        try:
            d.check(value)
        except ValueError as err:  # UserError included
            _refuse(s, shown, str(err))


def check_group(instance: Any) -> None:
    """Check every declared field of a group instance (for a group built directly, not by `parse_group`)."""
    for s in settings_of(type(instance)):
        check_value(s, getattr(instance, s.name))


def group_table(instance: Any) -> dict[str, Any]:
    """Key -> value of a group instance, as a user writes them."""
    return {s.key: s.shown(getattr(instance, s.name)) for s in settings_of(type(instance))}


def default_table(groups: list[type]) -> dict[str, Any]:
    """Key -> default of every setting of the groups, as a user writes them."""
    return {s.key: s.shown(s.default) for g in groups for s in settings_of(g)}


def describe(groups: list[type]) -> list[dict[str, str]]:
    """One row per setting: key, type, default, allowed values and help (for `fl-medlego settings`)."""
    rows = []
    for g in groups:
        for s in settings_of(g):
            rows.append({"key": s.key, "type": s.type_name, "default": _shown_default(s),
                         "allowed": s.declaration.allowed(), "help": s.declaration.help})
    return rows


def markdown_table(groups: list[type]) -> str:
    """The settings as a Markdown table (the README's, regenerated by `fl-medlego settings --markdown`)."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for row in describe(groups):
        allowed = row["allowed"].replace("|", "\\|")
        lines.append(f"| `{row['key']}` | {row['type']} | `{row['default']}` | {allowed} | "
                     f"{row['help'].replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n"


def _shown_default(s: Setting) -> str:
    value = s.shown(s.default)
    return '""' if value == "" else repr(value) if isinstance(value, float) else str(value)


def _convert(s: Setting, value: Any) -> Any:
    if s.declaration.parse is not None:
        if not isinstance(value, str):
            _refuse(s, value, f"{s.key} is text: quote it, e.g. {s.key}={s.shown(s.default)!r}")
        try:
            return s.declaration.parse(value)
        except ValueError as err:  # UserError included
            _refuse(s, value, str(err))
    if s.type in (int, float):
        return _number(s, value)
    if s.type is bool:
        if not isinstance(value, bool):
            _refuse(s, value, f"{s.key} is true or false")
        return value
    if s.type is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            _refuse(s, value, f"{s.key} is text: quote it, e.g. {s.key}='{value}'")
        return value
    return _list(s, value)


def _number(s: Setting, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = " (without quotes)" if isinstance(value, str) else ""
        _refuse(s, value, f"{s.key} is {'an integer' if s.type is int else 'a number'}{hint}, "
                          f"e.g. {s.key}={_num(s.default)}")
    if math.isnan(value):
        _refuse(s, value, f"{s.key} must be a number, not NaN")
    if s.type is int:
        if isinstance(value, float) and not value.is_integer():
            _refuse(s, value, f"{s.key} is an integer, e.g. {s.key}={s.default}")
        return int(value)
    return float(value)


def _list(s: Setting, value: Any) -> tuple:
    item_type = typing.get_args(s.type)[0]
    if isinstance(value, str):
        items = [t.strip() for t in value.split(",") if t.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif item_type is int and isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        items = None
    if items is None or (item_type is str and not all(isinstance(i, str) for i in items)):
        _refuse(s, value, f"{s.key} is comma-separated text, e.g. {s.key}='{s.shown(s.default) or 'a,b'}'")
    if item_type is int:
        items = [_list_int(s, value, i) for i in items]
    return tuple(items)


def _list_int(s: Setting, value: Any, item: Any) -> int:
    if isinstance(item, str) and item.lstrip("-").isdigit():
        return int(item)
    if isinstance(item, int) and not isinstance(item, bool):
        return item
    if isinstance(item, float) and item.is_integer():
        return int(item)
    _refuse(s, value, f"{s.key} is comma-separated integers, e.g. {s.key}='2,4,8'")


def _in_range(d: Declaration, x: float) -> bool:
    return ((d.low is None or x >= d.low) and (d.high is None or x <= d.high)
            and (d.above is None or x > d.above) and (d.below is None or x < d.below))


def _range_words(d: Declaration) -> str:
    if d.accepts is not None:
        return d.accepts
    if d.above == 0 and d.high is None and d.below is None:
        return "positive (> 0)"
    return d.allowed()


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _refuse(s: Setting, value: Any, why: str) -> typing.NoReturn:
    example = s.shown(s.default)
    # from None: the reason is in the message; a chained traceback would only bury it (under flwr run too)
    raise ConfigError(f"{s.key}={value!r} is refused: {why} (the default: {s.key}={example!r})") from None
