"""Command-line options declared once, on the config dataclass each one fills.

A config field names its flag and help in its metadata (:func:`option`); the CLI adds every such
field to a parser (:func:`add_options`), builds the config from what was parsed (:func:`from_args`)
and spells a config out as the arguments that repeat it (:func:`command_line`), so a field is
written in one place. The value types below refuse a bad number at parse time, before any work.
Standard library only: the field runtime (Python 3.8) declares its build options here too.

    @dataclass
    class Config:
        rounds: int = field(default=20, metadata=option("--rounds", type=positive_int, help="timed rounds"))
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

KEY = "ltmp_deploy.option"  # where a field's metadata holds its Option


class Option(NamedTuple):
    flags: tuple[str, ...]  # empty: a positional argument, named by the field
    help: str
    argparse: Mapping[str, Any]  # the rest of add_argument's keywords (type, nargs, metavar, choices, action)
    off: tuple[str, str] | None  # (flag, help) of a second flag that sets the field to None


def option(*flags: str, help: str, off: tuple[str, str] | None = None, **argparse_options: Any) -> dict[str, Option]:
    """A field's ``metadata``: its command-line flags (none for a positional), help and argparse keywords.

    The default comes from the field (a field without one is a required option); ``off`` is the
    (flag, help) of a second flag that sets the field to None, such as ``--no-threshold``."""
    return {KEY: Option(flags, help, dict(argparse_options), off)}


def _options(config: Any) -> list[tuple[dataclasses.Field, Option]]:
    return [(f, f.metadata[KEY]) for f in dataclasses.fields(config) if KEY in f.metadata]


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_options(parser: argparse.ArgumentParser, config: type, exclude: tuple[str, ...] = ()) -> None:
    """Add an argument for every field of the dataclass ``config`` that declares an :func:`option`."""
    for f, opt in _options(config):
        if f.name in exclude:
            continue
        kwargs = {**opt.argparse, "help": opt.help}
        if f.default is not dataclasses.MISSING and not kwargs.get("required"):
            kwargs["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        elif opt.flags and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            kwargs["required"] = True
        if opt.flags:
            parser.add_argument(*opt.flags, dest=f.name, **kwargs)
        else:
            parser.add_argument(f.name, **kwargs)
        if opt.off:
            parser.add_argument(opt.off[0], action="store_true", help=opt.off[1])


def from_args(config: type, args: argparse.Namespace, **values: Any) -> Any:
    """The dataclass ``config`` from the parsed ``args`` of :func:`add_options`; ``values`` set the rest."""
    for f, opt in _options(config):
        if f.name in values or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if opt.off and getattr(args, _dest(opt.off[0]), False):
            value = None
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return config(**values)


def command_line(config: Any, exclude: tuple[str, ...] = ()) -> list[str]:
    """The arguments that give ``config`` again: every declared field but ``exclude``, in field order,
    a positional as its value, a flag with its value; None and False are left out (the default), but for a
    flag that turns something off (``action="store_false"``), which is given where its field is False."""
    words: list[str] = []
    for f, opt in _options(config):
        value = getattr(config, f.name)
        if f.name in exclude:
            continue
        if opt.argparse.get("action") == "store_false":  # a flag such as --no-tome: given where the field is False
            words += [opt.flags[-1]] * (value is False)
        elif value is None and opt.off:
            words.append(opt.off[0])
        elif value is None or value is False:
            continue
        elif not opt.flags:
            words.append(str(value))
        elif value is True:
            words.append(opt.flags[-1])
        elif isinstance(value, (list, tuple)):
            words += [opt.flags[-1], *map(str, value)]
        else:
            words += [opt.flags[-1], str(value)]
    return words


# -- the device the PyTorch side runs on: one option, on every command that runs PyTorch -----------

DEVICE_HELP = (
    "where PyTorch runs: auto (the default: CUDA when available, under torchrun the GPU of the process's "
    "LOCAL_RANK; else the CPU), cpu, cuda or cuda:N; a device this machine lacks is a one-line error (exit 2)"
)


def device_option(help: str = DEVICE_HELP) -> dict[str, Option]:
    """The ``--device`` option (default None: auto), for a config field; ``help`` where a command
    gives it a narrower meaning (bench: the GPU of its torch-cuda backends)."""
    return option("--device", metavar="DEVICE", help=help)


@dataclasses.dataclass
class DeviceChoice:
    """The ``--device`` of a command that has no config of its own (``add_options(p, DeviceChoice)``)."""

    device: str | None = dataclasses.field(default=None, metadata=device_option())


# -- value types: a bad number is refused when parsed, before any file is opened -------------------


def _whole(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {least}")
        return value

    return parse


positive_int = _whole(1)
non_negative_int = _whole(0)


def finite_float(text: str) -> float:
    """Any finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number")
    return value


def fraction(text: str) -> float:
    """A fraction of FLOPs kept, in (0, 1]."""
    value = finite_float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a fraction of FLOPs kept lies in (0, 1]")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


__all__ = [
    "DEVICE_HELP",
    "DeviceChoice",
    "add_options",
    "device_option",
    "command_line",
    "finite_float",
    "fraction",
    "from_args",
    "non_negative_float",
    "non_negative_int",
    "option",
    "positive_float",
    "positive_int",
]
