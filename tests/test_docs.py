"""The docs cannot drift from the CLI: every command is documented, and every documented command line parses.

Lines in code blocks (and every line of the example workflow) are parsed whole by the real parser, so a
renamed option, a lost choice or a missing required argument fails here. Inline code spans in prose may
be fragments; their subcommand and options must still exist.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from ltmp_deploy.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CLI_PAGE = REPO / "docs" / "cli.md"
WORKFLOW = REPO / "docs" / "examples" / "parity-gate.yml"
DOCS = (README, CLI_PAGE, WORKFLOW)
# Where a command starts: the installed script at the start of a shell command, or the module under python/torchrun.
START = re.compile(r"(?:^|&&|\|\||;|run:)\s*ltmp-deploy\s|-m ltmp_deploy\.cli\s")
SHELL_BREAKS = {"|", "||", "&&", ";", ">", "2>", ">>", "2>&1", "&"}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1, "ltmp-deploy has one level of subcommands"
    return dict(actions[0].choices)


PARSER = build_parser()
COMMANDS = _subcommands(PARSER)


def _argv(text: str) -> list[str]:
    """The arguments after `ltmp-deploy` in one shell line, up to the first shell operator or comment."""
    words = shlex.split(text, comments=True)
    for i, word in enumerate(words):
        if word in SHELL_BREAKS:
            return words[:i]
    return words


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, shell text after `ltmp-deploy`) for each command line in code blocks (all of a YAML file)."""
    found, inside, pending = [], path.suffix in (".yml", ".yaml"), ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        match = START.search(text)
        if match and not text[: match.start()].lstrip().startswith("#"):
            found.append((number, text[match.end() :]))
    return found


def _inline_spans(path: Path) -> list[tuple[int, str]]:
    """(line number, text after `ltmp-deploy`) for each inline code span outside code blocks."""
    found, inside = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if inside:
            continue
        for span in re.findall(r"``\s?(.+?)\s?``|`([^`]+)`", line):
            text = span[0] or span[1]
            if text.startswith("ltmp-deploy "):
                found.append((number, text[len("ltmp-deploy ") :]))
    return found


def _parse(argv: list[str]) -> str | None:
    """None when the real parser accepts ``argv``, else what it said."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            PARSER.parse_args(argv)
    except SystemExit as exit:
        if exit.code not in (0, None):  # `--help` lines exit 0
            return err.getvalue().strip().splitlines()[-1]
    return None


def _known_options(command: str) -> set[str]:
    return {s for a in COMMANDS[command]._actions for s in a.option_strings}


CODE_LINES = [(path, n, text) for path in DOCS for n, text in _code_lines(path)]


def _ids(value: object) -> str | None:
    return value.name if isinstance(value, Path) else None


INLINE_SPANS = [(path, n, text) for path in (README, CLI_PAGE) for n, text in _inline_spans(path)]


def test_the_docs_hold_command_lines_to_check():
    assert {p for p, _, _ in CODE_LINES} == set(DOCS)
    assert len(CODE_LINES) > 40 and len(INLINE_SPANS) > 5


@pytest.mark.parametrize(("path", "number", "text"), CODE_LINES, ids=_ids)
def test_every_documented_command_line_parses(path, number, text):
    argv = _argv(text)
    where = f"{path.relative_to(REPO)}:{number}: ltmp-deploy {text}"
    assert argv and argv[0] in COMMANDS, f"{where}: no such subcommand"
    problem = _parse(argv)
    assert problem is None, f"{where}: {problem}"
    # argparse takes abbreviations; the docs spell each option out
    spelled = [w.split("=")[0] for w in argv[1:] if w.startswith("--")]
    assert not [o for o in spelled if o not in _known_options(argv[0])], f"{where}: abbreviated option"


@pytest.mark.parametrize(
    ("path", "number", "text"), INLINE_SPANS, ids=lambda v: v.name if isinstance(v, Path) else None
)
def test_inline_command_fragments_name_real_commands_and_options(path, number, text):
    argv = _argv(text)
    where = f"{path.relative_to(REPO)}:{number}: `ltmp-deploy {text}`"
    if argv and argv[0].rstrip(":") == "COMMAND":  # the generic forms: `ltmp-deploy COMMAND --help`, its errors
        return
    if argv and argv[0].startswith("-"):
        top = {s for a in PARSER._actions for s in a.option_strings}
        assert argv[0] in top, f"{where}: ltmp-deploy has no option {argv[0]}"
        return
    assert argv and argv[0] in COMMANDS, f"{where}: no such subcommand"
    unknown = [
        w.split("=")[0] for w in argv[1:] if w.startswith("-") and w.split("=")[0] not in _known_options(argv[0])
    ]
    assert not unknown, f"{where}: {argv[0]} has no option {', '.join(unknown)}"


def _cli_sections() -> dict[str, str]:
    """docs/cli.md's text under each `### ltmp-deploy CMD` heading."""
    sections, current = {}, None
    for line in CLI_PAGE.read_text().splitlines():
        heading = re.fullmatch(r"###\s+`?ltmp-deploy ([\w-]+)`?\s*", line)
        if heading:
            current = heading.group(1)
            sections[current] = ""
        elif line.startswith("## "):
            current = None
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def test_the_cli_page_has_a_section_with_a_working_example_for_every_command():
    sections = _cli_sections()
    assert set(sections) == set(COMMANDS), (
        f"docs/cli.md: missing {sorted(set(COMMANDS) - set(sections))}, unknown {sorted(set(sections) - set(COMMANDS))}"
    )
    lines = {n: text for n, text in _code_lines(CLI_PAGE)}
    starts = {}
    for n, line in enumerate(CLI_PAGE.read_text().splitlines(), 1):
        heading = re.fullmatch(r"###\s+`?ltmp-deploy ([\w-]+)`?\s*", line)
        if heading:
            starts[heading.group(1)] = n
    ordered = sorted(starts.items(), key=lambda kv: kv[1])
    for i, (command, start) in enumerate(ordered):
        end = ordered[i + 1][1] if i + 1 < len(ordered) else 10**9
        examples = [text for n, text in lines.items() if start < n < end and _argv(text)[:1] == [command]]
        assert examples, f"docs/cli.md: the section on {command} has no example of it"


def test_options_named_in_a_commands_section_are_its_own():
    for command, text in _cli_sections().items():
        named = set(re.findall(r"`(--[a-z][\w-]*)", text))
        unknown = named - _known_options(command)
        assert not unknown, f"docs/cli.md, {command}: no option {', '.join(sorted(unknown))}"


def test_a_wrong_option_is_caught():
    """The checks above can fail: a line with an option the parser lacks is refused."""
    assert _parse(_argv("export fixed.safetensors --mode fixed -o fixed.onnx")) is None
    assert _parse(_argv("export fixed.safetensors --made fixed -o fixed.onnx")) is not None
    assert _parse(_argv("check fixed.onnx --trt 9.9")) is not None
    assert _argv("validate a.onnx --against b.safetensors -o p.json || status=$?") == [
        "validate",
        "a.onnx",
        "--against",
        "b.safetensors",
        "-o",
        "p.json",
    ]
