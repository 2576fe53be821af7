"""Typed configuration: one dataclass per stage and per model.

A field's default, type and help text (``help`` in its metadata) are written
once; ``add_flags`` turns the fields into command-line flags (``max_len`` ->
``--max-len``; a bool that defaults to True -> ``--name / --no-name``, one
that defaults to False -> ``--name``), ``from_args`` reads them back, and
``load`` rebuilds a dataclass from a saved ``config.json`` section, refusing
unknown or missing keys (a file written by another version of the code). Every float
flag must be finite (``finite_float``); ``Parser`` makes a bad flag one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from lastfm.common import PipelineError

T = TypeVar("T")


def option(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with its help text (``choices=`` etc. pass to argparse)."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def finite_float(text: str) -> float:
    """A float flag's value: a finite number (NaN and infinity pass every comparison
    with a bound, so they are refused here, where every float flag is parsed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
    return value


class Parser(argparse.ArgumentParser):
    """argparse with the project's error path: a bad flag is one line and exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def parser(description: str) -> Parser:
    return Parser(description=description)


def add_flags(
    parser: argparse.ArgumentParser, cls: type, title: str | None = None, skip=()
) -> None:
    """Add one flag per field of the dataclass ``cls`` (defaults from the class), but for
    the fields in ``skip`` (flags another dataclass already adds)."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = dict(f.metadata)
        help_text = meta.pop("help", None)
        kind = hints[f.name]
        if kind is bool:
            group.add_argument(
                _flag(f.name),
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=help_text,
                dest=f.name,
            )
            continue
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is float:
            kind = finite_float
        shown = f"{help_text} (default: %(default)s)" if help_text else None
        group.add_argument(
            _flag(f.name), type=kind, default=f.default, help=shown, dest=f.name, **meta
        )


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The dataclass ``cls`` filled from parsed flags; its ``check()`` runs if it has one."""
    obj = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
    check = getattr(obj, "check", None)
    if check is not None:
        check()
    return obj


def load(cls: type[T], saved: dict, source: str) -> T:
    """Rebuild ``cls`` from a saved dictionary; unknown or missing keys are errors."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown, missing = sorted(set(saved) - names), sorted(names - set(saved))
    if unknown or missing:
        raise PipelineError(
            f"{source}: saved by another version of the code ({cls.__name__} keys unknown "
            f"{unknown}, missing {missing}); retrain or rerun the stage that wrote it"
        )
    return cls(**saved)


def as_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """The one flag every stage shares: the data root (``paths.Layout``)."""
    parser.add_argument(
        "--data-dir",
        default=None,
        help="data root (default $LASTFM_DATA_DIR, else data/ beside the scripts)",
    )


def require_at_least(obj: Any, minimum: float, *names: str) -> None:
    """PipelineError naming the flag when a field of ``obj`` is below ``minimum`` or not a
    finite number (a config built in code skips ``finite_float``)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not (math.isfinite(value) and value >= minimum):
            raise PipelineError(
                f"{_flag(name)} {value}: must be a finite number of at least {minimum}"
            )


def require_above(obj: Any, bound: float, *names: str) -> None:
    """PipelineError naming the flag when a field of ``obj`` is not a finite number
    above ``bound``."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not (math.isfinite(value) and value > bound):
            raise PipelineError(f"{_flag(name)} {value}: must be a finite number above {bound}")
