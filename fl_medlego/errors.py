"""The errors a user can cause, told apart from the project's own faults.

A `UserError` is something the person at the keyboard can fix (a wrong setting, an unknown name, a
missing file): the command line prints its one-line message and exits 2. Anything else that escapes
is a fault of fl-medlego itself: the command line shows its traceback and exits 1.
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(ValueError):
    """A mistake in what the user asked for; the message names the problem and the fix, in one line."""


class ConfigError(UserError):
    """A run config key or a command option with a value outside what it accepts."""


class UnknownNameError(UserError):
    """A name that no registry holds (a merge method, a site kind, a strategy, a model preset, ...).

    Every registry raises this one type, with the names it knows, so callers catch one thing.
    """

    def __init__(self, what: str, name: object, known: Iterable[str], hint: str = "") -> None:
        self.what, self.name, self.known = what, name, sorted(known)
        plural = what[:-1] + "ies" if what.endswith("y") else what + "s"
        hint = f"; {hint}" if hint else ""
        super().__init__(f"unknown {what} {name!r}; known {plural}: {', '.join(self.known) or '(none)'}{hint}")
