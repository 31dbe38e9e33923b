"""User mistakes through the `mtf` command line: one line naming the thing and the fix on
stderr, exit code 2, no traceback (mtf/errors.py); the traceback only at --log-level debug."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
from typing import Any

import pyarrow as pa
import pytest
import torch
from deltalake import write_deltalake

from mtf import contract as S
from mtf.cli import COMMANDS, Command, main
from mtf.config import load_config
from mtf.errors import EXIT_USER_ERROR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared session keeps its own shuffle partitions when a command reuses it.
SPARK = "spark.shuffle_partitions=2"


def user_error(capsys: Any, argv: list[str], *names: str) -> str:
    """Run ``mtf <argv>`` in-process; assert the user-error contract; return the error line."""
    assert main(argv) == EXIT_USER_ERROR == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 3, err
    assert "Traceback" not in err
    line = lines[-1]
    assert line.startswith(f"mtf {argv[0]}: error: "), err
    for name in names:
        assert name in line, (name, line)
    return line


# ---- config: key, type, range, YAML, file ---------------------------------------------------

@pytest.mark.parametrize("argv, names", [
    (["train.batch_sise=5"], ["unknown config key train.batch_sise", "known keys: "]),
    (["train.batch_size=abc"], ["train.batch_size: expected int, got str 'abc'"]),
    # __post_init__ range checks (plain ValueError in code) come out naming the dotted key
    (["train.bcq.lam=2"], ["train.bcq.lam must be in [0, 1], got 2.0"]),
    (["train.device=tpu"], ["train.device must be one of ['auto', 'cpu', 'cuda'], got 'tpu'"]),
    (["etl.session_gap_s=0"], ["etl: session_gap_s must be > 0"]),
    (["train.start_ds=2026-13-01"], ["override 'train.start_ds=2026-13-01'", "not valid YAML",
                                     "month must be in 1..12", "quote a string value"]),
    (["--conf-file", "/nonexistent/mtf.yaml"], ["config file '/nonexistent/mtf.yaml' does "
                                                "not exist"]),
])
def test_bad_config_key_or_value(capsys: Any, argv: list[str], names: list[str]) -> None:
    user_error(capsys, ["show-config", *argv], *names)


def test_invalid_yaml_file_is_one_line(capsys: Any, tmp_path: Any) -> None:
    conf = tmp_path / "bad.yaml"
    conf.write_text("train:\n  batch_size: 5\n  - x\n")
    user_error(capsys, ["show-config", "--conf-file", str(conf)],
               f"config file '{conf}' is not valid YAML: expected <block end>, but found '-' "
               f"at line 3, column 3")


# ---- missing table or path -------------------------------------------------------------------

def test_train_without_a_transitions_table(capsys: Any, tmp_path: Any) -> None:
    user_error(capsys, ["train", f"lake.root={tmp_path}"],
               f"no transitions table at '{tmp_path}/transitions'", "mtf build-transitions",
               "lake.transitions")


def test_evaluate_without_a_transitions_table(spark: Any, capsys: Any, tmp_path: Any) -> None:
    user_error(capsys, ["evaluate", f"lake.root={tmp_path}", SPARK],
               f"no transitions table at '{tmp_path}/transitions'", "mtf build-transitions")


def test_build_transitions_without_raw_logs(spark: Any, capsys: Any, tmp_path: Any) -> None:
    user_error(capsys, ["build-transitions", f"lake.root={tmp_path}", SPARK],
               f"no impression logs at '{tmp_path}/raw_impressions'", "lake.raw_logs")
    assert sorted(os.listdir(tmp_path)) == []   # nothing written


def test_export_of_a_missing_checkpoint(capsys: Any, tmp_path: Any) -> None:
    user_error(capsys, ["export", f"lake.root={tmp_path}", "train.export_checkpoint=nope"],
               "no checkpoint file or run directory at 'nope'", "train.export_checkpoint")


def test_build_transitions_without_the_profile_table(spark: Any, capsys: Any,
                                                     tmp_path: Any) -> None:
    # The profile table is read right after the logs' schema is checked: no rows needed.
    schema = S.impression_log_arrow_schema(load_config().fusion.names)
    write_deltalake(str(tmp_path / "raw_impressions"), schema.empty_table())
    user_error(capsys, ["build-transitions", f"lake.root={tmp_path}", SPARK],
               f"no user-profile table at '{tmp_path}/user_profiles'", "lake.user_profiles",
               "features.profile_columns=[]")
    assert sorted(os.listdir(tmp_path)) == ["raw_impressions"]


# ---- schema mismatch -------------------------------------------------------------------------

def test_raw_logs_with_the_wrong_schema(spark: Any, capsys: Any, tmp_path: Any) -> None:
    raw = str(tmp_path / "raw_impressions")
    write_deltalake(raw, pa.table({"event_id": ["e1"], "position": ["3"]}))
    line = user_error(capsys, ["build-transitions", f"lake.root={tmp_path}", SPARK],
                      f"raw_logs '{raw}'", "column 'user_id' is missing")
    assert "docs/contract.md" in line
    assert sorted(os.listdir(tmp_path)) == ["raw_impressions"]


# ---- unknown table version -------------------------------------------------------------------

@pytest.fixture
def two_versions(tmp_path: Any) -> str:
    """A lake whose transitions table has versions 0 and 1 (the version check comes first)."""
    for _ in range(2):
        write_deltalake(str(tmp_path / "transitions"), pa.table({"x": [1]}), mode="append")
    return str(tmp_path)


def test_train_at_a_version_the_table_lacks(capsys: Any, two_versions: str) -> None:
    user_error(capsys, ["train", f"lake.root={two_versions}", "train.table_version=7"],
               f"transitions table '{two_versions}/transitions' at version 7",
               "its latest version is 1", "set train.table_version to a version <= 1")


def test_evaluate_at_a_version_the_table_lacks(spark: Any, capsys: Any,
                                               two_versions: str) -> None:
    user_error(capsys, ["evaluate", f"lake.root={two_versions}", "ope.table_version=7", SPARK],
               f"transitions table '{two_versions}/transitions' at version 7",
               "its latest version is 1", "set ope.table_version to a version <= 1")


@pytest.fixture
def cleaned_up(tmp_path: Any) -> str:
    """A transitions table at versions 0-2 whose version 0 log entry was cleaned up (a
    checkpoint at version 2 keeps the newer ones readable), as Delta's log retention does."""
    from deltalake import DeltaTable

    path = str(tmp_path / "transitions")
    for _ in range(3):
        write_deltalake(path, pa.table({"x": [1]}), mode="append")
    DeltaTable(path).create_checkpoint()
    os.remove(os.path.join(path, "_delta_log", f"{0:020d}.json"))
    return str(tmp_path)


def test_train_at_a_cleaned_up_version(capsys: Any, cleaned_up: str) -> None:
    user_error(capsys, ["train", f"lake.root={cleaned_up}", "train.table_version=0"],
               f"cannot open transitions table '{cleaned_up}/transitions' at version 0",
               "removed (Delta log retention or VACUUM)",
               "Set train.table_version to a newer version or to null for the latest")


def test_evaluate_at_a_cleaned_up_version(spark: Any, capsys: Any, cleaned_up: str) -> None:
    user_error(capsys, ["evaluate", f"lake.root={cleaned_up}", "ope.table_version=0", SPARK],
               f"cannot evaluate transitions table '{cleaned_up}/transitions' at version 0",
               "removed (Delta log retention or VACUUM)",
               "Set ope.table_version to a newer version or to null for the latest")


def test_train_at_a_vacuumed_version(spark: Any, capsys: Any, tmp_path: Any) -> None:
    from deltalake import DeltaTable

    from tests.rl.tables import write_transitions
    path = str(tmp_path / "transitions")
    for seed in (0, 1):   # version 1 replaces version 0's files; VACUUM then deletes them
        write_transitions(spark, path, n_sessions=20, n_files=1, seed=seed)
    DeltaTable(path).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    capsys.readouterr()
    user_error(capsys, ["train", f"lake.root={tmp_path}", "train.table_version=0"],
               f"transitions table '{path}' version 0: data file file://{path}/",
               "is gone", "set train.table_version to a newer version or to null")


def test_tables_on_remote_storage_that_are_not_there(capsys: Any) -> None:
    """A store the deltalake package reads without a network (memory://) stands in for object
    storage: no local directory to check first, the reader's own error is mapped."""
    user_error(capsys, ["train", "lake.transitions=memory:///lake/transitions"],
               "no transitions table at 'memory:///lake/transitions'",
               "build it first with `mtf build-transitions`")


def test_spark_reads_name_a_missing_table_without_a_local_check(
        spark: Any, tmp_path: Any) -> None:
    """read_delta checks local paths up front; for remote storage it maps Spark's own error
    conditions. An empty _delta_log passes the local check and reaches Spark's."""
    from mtf.delta import read_delta
    from mtf.errors import MissingInputError

    (tmp_path / "t" / "_delta_log").mkdir(parents=True)
    with pytest.raises(MissingInputError) as err:
        read_delta(spark, str(tmp_path / "t"))
    assert str(err.value) == f"no Delta table at '{tmp_path}/t' (DELTA_TABLE_NOT_FOUND)"


def test_train_for_days_the_table_does_not_have(spark: Any, capsys: Any, tmp_path: Any) -> None:
    from tests.rl.tables import write_transitions
    write_transitions(spark, str(tmp_path / "transitions"), n_sessions=20, n_files=1)
    capsys.readouterr()       # set-up output (its log lines) is not the command's
    user_error(capsys, ["train", f"lake.root={tmp_path}", "train.start_ds=2026-02-01"],
               "no data files for ds in [2026-02-01, -]", "check train.start_ds / train.end_ds")


# ---- environment: Delta jars, GPU ------------------------------------------------------------

def test_missing_delta_jars(capsys: Any, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("MTF_JARS_DIR", str(tmp_path / "no-jars"))
    for command in ("build-transitions", "jars"):
        user_error(capsys, [command, f"lake.root={tmp_path}"],
                   f"no Delta Lake jars in {tmp_path}/no-jars (MTF_JARS_DIR)",
                   "scripts/setup.sh", "python -m mtf.spark --fetch-jars")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command, key", [("train", "train.device"), ("evaluate", "ope.device")])
def test_cuda_without_a_gpu(capsys: Any, tmp_path: Any, command: str, key: str) -> None:
    user_error(capsys, [command, f"lake.root={tmp_path}", f"{key}=cuda"],
               f"{key}='cuda' but torch.cuda.is_available() is False", f"set {key}=auto or cpu")


# ---- the CLI itself --------------------------------------------------------------------------

def test_a_command_missing_from_the_build(capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setitem(COMMANDS, "show-config", Command("mtf.not_in_this_build:run", ""))
    user_error(capsys, ["show-config"], "this command is not available in this build "
                                        "(mtf.not_in_this_build is missing)")


def test_a_bug_keeps_its_traceback(monkeypatch: Any) -> None:
    # Not a UserError: json.loads(MtfConfig) is a TypeError and must propagate as is.
    monkeypatch.setitem(COMMANDS, "show-config", Command("json:loads", ""))
    with pytest.raises(TypeError, match="the JSON object must be str"):
        main(["show-config"])


def test_jobs_entry_point_reports_the_same_way(capsys: Any, tmp_path: Any,
                                               monkeypatch: Any) -> None:
    """jobs/<name>.py (spark-submit, torchrun) go through the same handling: exit code 2."""
    monkeypatch.setattr(sys, "argv", ["jobs/train.py", f"lake.root={tmp_path}"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(os.path.join(ROOT, "jobs", "train.py"), run_name="__main__")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"mtf train: error: no transitions table at "
                                f"'{tmp_path}/transitions' (no _delta_log); build it first with "
                                f"`mtf build-transitions`, or point lake.transitions at it"]


def test_the_real_entry_point_prints_no_traceback_unless_debug(tmp_path: Any) -> None:
    """One subprocess each way: the real interpreter's exit code and stderr."""
    conf = str(tmp_path / "missing.yaml")
    argv = [sys.executable, "-m", "mtf.cli", "show-config", "--conf-file", conf]
    expected = f"mtf show-config: error: config file '{conf}' does not exist"
    plain = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert plain.returncode == 2
    assert plain.stderr.splitlines() == [expected], plain.stderr
    debug = subprocess.run([*argv, "--log-level", "debug"], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert f"mtf.configtools.ConfigError: config file '{conf}' does not exist" in debug.stderr
    assert debug.stderr.splitlines()[-1] == expected   # the message stays last
