"""Numeric options of every command are checked when parsed, before any work: one line, exit code 2."""

from __future__ import annotations

import argparse

import pytest

from ltmp_deploy.cli import build_parser, main

# Options whose every value means something (a cosine-similarity threshold may be negative).
UNCHECKED = {("bench", "--merge-threshold")}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_no_numeric_option_takes_any_int_or_float():
    """A plain type=int or type=float lets 0 and negatives through to the library, or to the end of a run."""
    loose = [
        (name, action.option_strings[-1])
        for name, parser in _subcommands().items()
        for action in parser._actions
        if action.type in (int, float) and (name, action.option_strings[-1]) not in UNCHECKED
    ]
    assert not loose, loose


BAD = [
    ("demo", "--rounds", "0"),
    ("demo", "--rounds", "-3"),
    ("demo", "--epochs", "0"),
    ("demo", "--threads", "0"),
    ("demo", "--target", "0"),
    ("trial", "--rounds", "0"),
    ("trial", "--limit", "0"),
    ("trial", "--target", "1.5"),
    ("trial", "--lr-merge", "-1"),
    ("evaluate", "--target", "0"),
    ("train-base", "--epochs", "0"),
    ("train-base", "--seed", "-1"),
    ("learn", "--workers", "-1"),
    ("learn", "--epochs", "0"),
    ("learn", "--batch-size", "0"),
    ("learn", "--limit", "0"),
    ("learn", "--target", "1.5"),
    ("learn", "--tau", "0"),
    ("learn", "--lr-merge", "nan"),
    ("calibrate", "--int8-images", "0"),
    ("calibrate", "--flops-target", "0"),
    ("validate", "--images", "0"),
    ("validate", "--batch", "-1"),
    ("predict", "-k", "0"),
    ("predict", "--batch", "x"),
    ("export", "--batch", "0"),
    ("export", "--triton-max-batch", "0"),
    ("bench", "--threads", "-1"),
    ("bench", "--rounds", "0"),
    ("bench", "--warmup", "-1"),
    ("bench", "--batch", "0"),
    ("bench", "--targets", "1.5"),
    ("estimate", "--price-per-hour", "0"),
    ("build", "--max-batch", "0"),
    ("build", "--dla-core", "-1"),
]
POSITIONALS = {
    "learn": ["m", "--target", "0.5", "-o", "o"],
    "calibrate": ["m", "-o", "o"],
    "trial": ["m", "--data", "d"],
    "evaluate": ["m", "--data", "d", "-o", "o"],
    "validate": ["f"],
    "predict": ["f", "i"],
    "export": ["m", "-o", "o"],
    "estimate": ["b", "--price-per-hour", "1"],
    "build": ["f", "--preset", "thor", "-o", "o"],
}


@pytest.mark.parametrize(("command", "option", "value"), BAD)
def test_bad_numeric_values_are_refused_at_parse_time(command, option, value, capsys):
    argv = [command, *POSITIONALS.get(command, []), option, value]
    assert main(argv) == 2  # the files named do not exist: the value was refused before anything was opened
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and (f"{option} {value}:" in err or f"argument {option}: '{value}'" in err), err


def test_train_base_options_that_only_apply_with_output(capsys):
    assert main(["train-base", "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--epochs needs -o OUT" in err


def test_demo_library_refuses_bad_values_before_the_first_step(tmp_path):
    from ltmp_deploy.demo import run_demo
    from ltmp_deploy.errors import LTMPError

    with pytest.raises(LTMPError, match="--rounds 0"):
        run_demo(tmp_path / "demo", rounds=0)
    assert not (tmp_path / "demo").exists()


def test_the_missing_schedule_advice_names_a_command_and_options_that_exist():
    from conftest import tiny_ltmp

    from ltmp_deploy.errors import LTMPError

    with pytest.raises(LTMPError) as err:
        tiny_ltmp().ltmp_set_mode("fixed")
    advice = str(err.value)
    assert "ltmp-deploy calibrate" in advice, advice
    options = {o for a in _subcommands()["calibrate"]._actions for o in a.option_strings}
    advised = {word.strip("`()") for word in advice.split() if word.startswith(("--", "(--"))}
    assert advised and advised <= options, (advised, options)


# -- options declared once, on the config dataclasses ------------------------------------------------

CONFIGS = {
    "bench": "ltmp_deploy.bench.config:BenchConfig",
    "build": "ltmp_deploy.runtime.trt.build_options:BuildOptions",
}
CONFIGS["learn"] = "ltmp_deploy.calibration.learn_config:LearnConfig"


def _config(command: str) -> type:
    import importlib

    module, name = CONFIGS[command].split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_declared_config_field_is_an_option_of_its_command(command):
    from dataclasses import fields

    from ltmp_deploy.options import KEY

    dests = {a.dest for a in _subcommands()[command]._actions}
    declared = {f.name for f in fields(_config(command)) if KEY in f.metadata}
    assert declared and declared <= dests, declared - dests


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("bench", ["m.safetensors", "--targets", "--no-threshold", "--batch", "1", "4", "--rounds", "3"]),
        ("bench", ["m.safetensors", "--targets", "0.5", "--no-tome", "--compile", "--batch", "256"]),
        ("bench", ["--targets", "0.5", "--threshold-target", "0.4", "--from-checkpoint", "--threads", "2"]),
        ("build", ["g.onnx", "--preset", "orin-nx", "--workspace", "64", "--strongly-typed", "-o", "e"]),
        ("learn", ["m", "--target", "0.5", "--lambda", "2", "--finetune", "--seed", "3", "-o", "o"]),
    ],
)
def test_a_config_spelled_out_parses_back_to_itself(command, argv):
    """The parsed config, written back as arguments (how bench records the command that repeats it), and
    parsed again, is the same config: no field is lost or renamed between the dataclass and its options."""
    from ltmp_deploy.options import command_line, from_args

    parser, config = _subcommands()[command], _config(command)
    first = from_args(config, parser.parse_args(argv))
    fixed = {"bench": [], "build": ["g.onnx", "-o", "e"], "learn": ["m", "-o", "o"]}[command]
    again = from_args(config, parser.parse_args([*command_line(first), *fixed]))
    assert again == first
    assert first != config(**({"target": 0.5} if command == "learn" else {}))  # the argv changed something


def test_help_shows_defaults_and_examples(capsys):
    assert main(["bench", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 1 8 32)" in text and "(default: 20)" in text and "example:" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_json_is_a_flag_and_takes_no_file(capsys):
    """The old spelling `--json REPORT` is refused in one line, before any file is opened."""
    for argv in (
        ["validate", "a.onnx", "--against", "b.onnx", "--json", "parity.json"],
        ["estimate", "bench.json", "--price-per-hour", "1", "--json", "parity.json"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "unrecognized arguments: parity.json" in err, err
