"""Where the user's input meets the library: help that shows defaults, typed option values, and the
errors that are the user's to fix (a `UserError`, exit 2) told apart from fl-medlego's own faults (exit 1)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version

from rich.console import Console
from rich.markup import escape

from fl_medlego.errors import UserError


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter, but a default the help text already states is not repeated, and an unset
    option's None or a flag's False is not shown (its help says what happens without it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS  # not 0
        if "(default" in text or unset or action.required:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Every (sub)command shows its options' defaults; subcommands inherit the parser class."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def installed_version() -> str:
    try:
        return version("fl-medlego")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from fl_medlego import __version__

        return __version__


def comma_list(item: Callable[[str], object], what: str) -> Callable[[str], list]:
    """An argparse type: comma-separated values of one type; a bad item is argparse's one-line usage error."""

    def parse(text: str) -> list:
        try:
            return [item(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated {what}, e.g. 1,2") from None

    return parse


@contextlib.contextmanager
def as_user_error(*also: type[Exception]) -> Iterator[None]:
    """Around a call on what the user named (paths, a config file, an edit of their own files): a missing or
    occupied file, and the types in `also` that the called code raises only for bad input, are the user's to fix.

    For library code that does not raise a UserError itself yet; keep the block to that one call."""
    try:
        yield
    except UserError:
        raise
    except (FileNotFoundError, FileExistsError, *also) as err:
        raise UserError(str(err)) from err


def run_command(command: Callable[[], int], console: Console) -> int:
    """Run a command: a UserError prints one line and exits 2; anything else is our fault, shown in full (exit 1)."""
    try:
        return command()
    except UserError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")  # a message's [lists] are text, not markup
        return 2
    except Exception:
        traceback.print_exc(file=sys.stderr)
        print(f"internal error, please report it with the traceback above (fl-medlego {installed_version()})",
              file=sys.stderr)
        return 1
