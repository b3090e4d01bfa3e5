"""The ``ltmp-deploy`` command: the parser, the one-line errors and exit codes every subcommand shares.

The subcommands live in a module per group, each command's ``add_*`` function (its options) beside
the ``run_*`` handler that turns them into library calls and prints the outcome:

- :mod:`~ltmp_deploy.cli_model`: patch, train-base, learn, calibrate, demo (the full toolkit)
- :mod:`~ltmp_deploy.cli_trial`: trial, evaluate (the full toolkit)
- :mod:`~ltmp_deploy.cli_deploy`: export, then check, validate, build
- :mod:`~ltmp_deploy.cli_field`: predict, show, inspect
- :mod:`~ltmp_deploy.cli_measure`: bench, estimate, report

Every one of them imports without torch (the field install builds the whole parser); heavy imports
(torch, timm, onnx) happen inside the handlers, so ``--help`` is instant and a field device without
torch can still run the runtime commands.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

from ltmp_deploy import __version__, cli_deploy, cli_field, cli_measure, cli_model, cli_trial
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.extras import explain_missing, require_full

# In the order `ltmp-deploy --help` lists them.
COMMANDS = (
    cli_model.add_patch,
    cli_deploy.add_export,
    cli_deploy.add_check,
    cli_model.add_demo,
    cli_trial.add_trial,
    cli_trial.add_evaluate,
    cli_field.add_show,
    cli_field.add_predict,
    cli_field.add_inspect,
    cli_measure.add_bench,
    cli_measure.add_cost,
    cli_measure.add_estimate,
    cli_measure.add_report,
    cli_model.add_train_base,
    cli_model.add_learn,
    cli_model.add_calibrate,
    cli_deploy.add_validate,
    cli_deploy.add_build,
)


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line (the option and what is wrong), exit code 2, as every other mistake."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # "argument --rounds: 0: must be ..." from the value types reads "--rounds 0: must be ...",
        # as the library's own messages do
        value = re.match(r"argument (?:\S+/)?(-\S+): (\S+): (.+)$", message)
        if value:
            message = f"{value[1]} {value[2]}: {value[3]}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions as usual, prints a command's examples (its epilog) as written, and ends
    each option's help with its default where the help does not already say what it is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        unset = default is None or default is False or default == "" or default == argparse.SUPPRESS
        # A flag that takes no value (--no-tome) says what it does; its default is only the opposite.
        if unset or action.nargs == 0 or not action.option_strings or "default" in text.lower():
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ltmp-deploy",
        description="Learned-threshold token merging and pruning (LTMP) for Vision Transformers: "
        "patch a timm ViT, learn its thresholds, calibrate, export to ONNX, build TensorRT engines, validate.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(
        name: str, handler: Callable[[argparse.Namespace], int], help: str, *examples: str, toolkit: bool = False
    ) -> argparse.ArgumentParser:
        """A subcommand: ``toolkit`` ones patch, train or export a PyTorch model (the full install)."""
        epilog = "example:\n" + "".join(f"  {line}\n" for line in examples) if examples else None
        p = sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter)
        p.set_defaults(func=handler, toolkit=toolkit)
        return p

    for command in COMMANDS:
        command(add)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is: Python's default handling ends it without running
    ``finally`` blocks, and those remove the temporary files of half-written outputs."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise _Terminated


@contextlib.contextmanager
def _sigterm_cleans_up() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version or a usage mistake: an exit code, as for every other outcome
        return done.code if isinstance(done.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with _sigterm_cleans_up():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.toolkit:
            require_full(f"ltmp-deploy {args.command}")
        return args.func(args)
    except ModuleNotFoundError as err:
        explained = explain_missing(err)
        if explained is None:
            raise
        print(f"ltmp-deploy {args.command}: error: {explained}", file=sys.stderr)
        return 2
    except LTMPError as err:
        print(f"ltmp-deploy {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as err:
        terminated = isinstance(err, _Terminated)
        print(f"ltmp-deploy {args.command}: interrupted{' by SIGTERM' if terminated else ''}", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
