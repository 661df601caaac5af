"""CLI for users: help text for people, help on every option, each error printed once, train shortcuts."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from protoseg.cli import build_parser, main
from protoseg.cli.common import config_from_args
from protoseg.cli.train import _shortcuts


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("protoseg",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_top_level_help_is_written_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "sub-command module" not in text and "register" not in text  # no developer notes
    assert "whole-slide" in text and "typical workflow:" in text
    for verb in ("train stage1", "predict", "export", "pseudo"):
        assert f"protoseg {verb}" in text


def test_every_option_has_help() -> None:
    missing = [f"{' '.join(path)} {a.option_strings or a.dest}" for path, a in _walk(build_parser()) if not a.help]
    assert not missing, f"options without help: {missing}"


def test_train_shortcuts_reach_the_config() -> None:
    args = build_parser().parse_args(
        ["train", "stage2", "--lr", "3e-4", "--batch-size", "4", "--patch-size", "96", "--epochs", "2"]
    )
    assert set(_shortcuts(args)) >= {"stage2.lr=0.0003", "data.batch_size=4", "data.patch_size=96"}
    cfg = config_from_args(args, _shortcuts(args))
    assert (cfg.stage2.lr, cfg.data.batch_size, cfg.data.patch_size, cfg.stage2.epochs) == (3e-4, 4, 96, 2)
    s1 = build_parser().parse_args(["train", "stage1", "--lr", "0.01"])
    assert config_from_args(s1, _shortcuts(s1)).stage1.lr == 0.01


@pytest.mark.parametrize("bad", [["--lr", "-1"], ["--batch-size", "0"], ["--patch-size", "8"]])
def test_train_shortcuts_refuse_bad_numbers(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "stage1", *bad])
    assert exc.value.code == 2 and bad[0] in capsys.readouterr().err


def test_an_error_is_printed_once_without_traceback(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    missing = tmp_path / "no-such-bank"
    run = subprocess.run(
        [sys.executable, "-m", "protoseg", "bank", "show", str(missing)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("protoseg: error:") and str(missing) in lines[0], run.stderr
    assert "Traceback" not in run.stderr
