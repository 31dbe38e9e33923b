"""The `mtf` console script and the jobs/ entry points."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mtf.cli import COMMANDS, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MTF = os.path.join(os.path.dirname(sys.executable), "mtf")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MTF, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_help_lists_every_subcommand() -> None:
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    for name in ("simulate", "build-transitions", "calibrate-rewards", "train", "export",
                 "evaluate", "pipeline", "show-config", "jars"):
        assert name in COMMANDS
        assert name in proc.stdout


def test_subcommand_help_shows_override_syntax() -> None:
    proc = run("train", "--help")
    assert proc.returncode == 0
    assert "--conf-file" in proc.stdout and "train.batch_size=512" in proc.stdout


def test_show_config_applies_overrides(capsys) -> None:
    assert main(["show-config", "train.batch_size=512", "--set", "seed=11"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["batch_size"] == 512 and cfg["seed"] == 11


def test_config_errors_exit_2_and_name_the_key() -> None:
    proc = run("show-config", "train.batch_size=big")
    assert proc.returncode == 2
    assert "train.batch_size: expected int, got str 'big'" in proc.stderr


def test_no_command_prints_help_and_fails(capsys) -> None:
    assert main([]) == 2
    assert "<command>" in capsys.readouterr().out


def test_every_command_target_resolves() -> None:
    """Each subcommand points at a real function."""
    from mtf.cli import resolve
    for name, cmd in COMMANDS.items():
        assert callable(resolve(cmd.target)), name


@pytest.mark.parametrize("job", sorted(f for f in os.listdir(os.path.join(ROOT, "jobs"))
                                       if f.endswith(".py")))
def test_jobs_are_thin_entry_points(job: str) -> None:
    """jobs/<x>.py only hands argv to `mtf <x>`; --help works without Spark."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", job), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--conf-file" in proc.stdout
