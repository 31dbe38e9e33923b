"""`mtf check-logs` through the CLI: a clean table (exit 0, the report, nothing written), a table
whose schema the build would refuse (the report, then one error line and exit 2), no table.
The dirty-table counts against a real build are in tests/etl/test_foreign_logs.py."""
from __future__ import annotations

import json

import pytest
from pyspark.sql import functions as F

from mtf.cli import main
from tests.etl.logs import logs_df, write_logs
from tests.etl.test_job import good_rows

ARGS = ("spark.shuffle_partitions=2",)


def check(capsys, root, *extra: str) -> tuple[int, str, list[str]]:
    """(exit code, stdout, stderr lines) of `mtf check-logs`."""
    code = main(["check-logs", f"lake.root={root}", *ARGS, *extra])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.startswith("mtf check-logs")]


@pytest.fixture(scope="module")
def clean(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    write_logs(spark, good_rows(), str(root / "raw_impressions"))
    return root


def test_clean_table_exits_0_and_writes_nothing(spark, clean, capsys, tmp_path) -> None:
    from delta.tables import DeltaTable

    code, out, errors = check(capsys, clean, f"check.json_out={tmp_path / 'r.json'}")
    assert (code, errors) == (0, [])
    lines = out.splitlines()
    assert lines[0] == f"check-logs: raw_logs '{clean / 'raw_impressions'}'"
    assert lines[1] == "days checked: 2026-01-01..2026-01-02 (every day in the table)"
    assert lines[3].split() == ["column", "found", "canonical", "nulls", "conversion"]
    rows = {line.split()[0]: line.split() for line in lines[4:27]}
    assert rows["position"] == ["position", "int", "int", "0", "as-is"]
    assert rows["app_session_id"] == ["app_session_id", "string", "string", "allowed", "as-is"]
    assert rows["pred_click"][3] == "allowed" and rows["liked"][3] == "0"
    assert lines[-2:] == ["rows checked: 10, valid: 10, would be quarantined: 0 (0.00%)",
                          "OK: build-transitions can build this table."]
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["buildable"], report["rows_checked"], report["rejected_by_reason"]) == \
        (True, 10, {})
    assert sorted(p.name for p in clean.iterdir()) == ["raw_impressions"]
    assert DeltaTable.forPath(spark, str(clean / "raw_impressions")).history().count() == 1

    code, out, _ = check(capsys, clean, "check.print_json=true")
    assert code == 0 and json.loads(out) == report


def test_a_refused_schema_is_reported_then_exits_2_with_one_line(spark, capsys,
                                                                 tmp_path) -> None:
    raw = str(tmp_path / "raw_impressions")
    (logs_df(spark, good_rows()).withColumn("ts", F.unix_seconds("ts"))
     .withColumn("liked", F.col("liked").cast("string"))
     .write.format("delta").partitionBy("ds").save(raw))
    code, out, errors = check(capsys, tmp_path, f"check.json_out={tmp_path / 'r.json'}")
    message = (f"raw_logs '{raw}': schema does not match the input contract "
               f"(docs/contract.md section 1): column 'ts' has type bigint, an epoch: set "
               f"etl.ts_unit to its unit (s, ms, us, ns); column 'liked' has type string, "
               f"expected int")
    assert (code, errors) == (2, [f"mtf check-logs: error: {message}"])
    rows = {line.split()[0]: line for line in out.splitlines()[2:25] if line}
    assert rows["ts"].split()[:5] == ["ts", "bigint", "timestamp", "-", "FATAL:"]
    assert rows["liked"].split()[:5] == ["liked", "string", "int", "-", "FATAL:"]
    assert out.splitlines()[-1] == (
        "FATAL: 2 column(s) do not meet the input contract (docs/contract.md section 1); "
        "build-transitions would stop before writing anything.")
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["buildable"], report["error"], report["rows_checked"]) == (False, message, 0)

    # With the epoch's unit set, ts is read (cast with range check); liked still stops it.
    code, out, errors = check(capsys, tmp_path, "etl.ts_unit=s")
    assert code == 2 and errors[0].endswith("column 'liked' has type string, expected int")
    assert "cast with range check: epoch in s -> UTC timestamp" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "raw_impressions"]


def test_no_table_exits_2_naming_the_path(capsys, tmp_path) -> None:
    code, _, errors = check(capsys, tmp_path)
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith(f"mtf check-logs: error: no impression logs at "
                                f"'{tmp_path / 'raw_impressions'}'")
