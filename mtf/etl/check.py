"""``mtf check-logs``: what build-transitions would make of the impression logs, writing nothing.

Reads ``lake.raw_logs`` for the same days as ``mtf build-transitions`` (``etl.start_ds`` /
``end_ds``, ``etl.lookback_days``, ``etl.column_map``, ``etl.ts_timezone``, ``etl.ts_unit``) and
reports, per contract column, the type found, the canonical type, what the build does with it
(as-is, cast, cast with range check, fatal) and, for the columns that must not be null, the
nulls; then the rows the build would quarantine, per reason. The row rules, the duplicate rule
and the day selection are the build's own (:mod:`mtf.etl.ingest`, :class:`Validator`), so the
counts equal the build's quarantine. A schema the build would refuse is printed, then raised
as :class:`mtf.contract.SchemaMismatchError` (exit code 2); rejected rows are not an error.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from mtf import contract as S
from mtf.errors import UserError
from mtf.etl.ingest import conform_raw_logs, raw_log_plans, read_raw_table, where
from mtf.etl.pipeline import (BUILD_SESSION_CONF, RunWindow, Validator, day_range, session_conf,
                              validation_context)
from mtf.etl.validate import REASONS, RowRules
from mtf.spark import get_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from mtf.config import MtfConfig

logger = logging.getLogger(__name__)

NULL_FLAG = "__mtf_null_"   # prefix of the per-column is-null flags taken before conversion


@dataclass(frozen=True)
class ColumnFinding:
    """One contract column of the table: what the build does with it."""

    column: str                 # contract name
    source: str                 # name in the table (etl.column_map)
    found: str | None           # type as read; 'void' = declared all-null; None = missing
    canonical: str
    action: str                 # as-is, cast, cast with range check, fatal
    how: str                    # the conversion, or the problem
    nullable: bool              # nulls allowed (not counted)
    nulls: int | None           # nulls in the checked rows, as read (None: not counted)


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_logs` found; ``buildable`` False means the schema is refused."""

    table: str
    buildable: bool
    error: str                  # the build's schema error ("" when buildable)
    columns: list[ColumnFinding]
    start_ds: str = ""          # the days checked (the build's output days)
    end_ds: str = ""
    full_rebuild: bool = True
    rows_checked: int = 0       # rows of those days (the build's rows_in)
    rows_valid: int = 0
    rows_rejected: int = 0      # what the build would quarantine
    rejected_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        """The console report."""
        lines = [f"check-logs: raw_logs {self.table!r}"]
        if self.buildable:
            days = (f"{self.start_ds}..{self.end_ds}"
                    + (" (every day in the table)" if self.full_rebuild else ""))
            lines.append(f"days checked: {days}")
        lines += ["", _columns_table(self.columns), ""]
        if not self.buildable:
            n = sum(c.action == S.FATAL for c in self.columns)
            lines.append(f"FATAL: {n} column(s) do not meet the input contract "
                         f"(docs/contract.md section 1); build-transitions would stop "
                         f"before writing anything.")
            return "\n".join(lines)
        share = 100.0 * self.rows_rejected / self.rows_checked if self.rows_checked else 0.0
        lines.append(f"rows checked: {self.rows_checked}, valid: {self.rows_valid}, "
                     f"would be quarantined: {self.rows_rejected} ({share:.2f}%)")
        if self.rejected_by_reason:
            lines.append("quarantine reasons (docs/contract.md section 5):")
            width = max(len(r) for r in self.rejected_by_reason)
            lines += [f"  {r:<{width}}  {n}" for r, n in self.rejected_by_reason.items()]
        lines.append("OK: build-transitions can build this table"
                     + (" (the rejected rows go to the quarantine table)."
                        if self.rows_rejected else "."))
        return "\n".join(lines)


def _columns_table(columns: Sequence[ColumnFinding]) -> str:
    head = ("column", "found", "canonical", "nulls", "conversion")
    rows = []
    for c in columns:
        found = c.found or "(missing)"
        if c.source != c.column:
            found = f"{found} [{c.source}]"
        if c.action == S.FATAL:
            conversion = f"FATAL: {c.how}"
        else:
            conversion = f"{c.action}: {c.how}" if c.how else c.action
        nulls = "allowed" if c.nullable else ("-" if c.nulls is None else str(c.nulls))
        rows.append((c.column, found, c.canonical, nulls, conversion))
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(4)]

    def line(r: Sequence[str]) -> str:
        return "  ".join([*(f"{v:<{w}}" for v, w in zip(r[:4], widths)), r[4]]).rstrip()

    return "\n".join(line(r) for r in (head, *rows))


def check_logs(spark: "SparkSession", cfg: "MtfConfig") -> CheckReport:
    """Check ``lake.raw_logs`` against the contract and the row rules; writes nothing.

    Raises:
        MissingInputError: no Delta table at ``lake.raw_logs``.
        UserError: no rows with a ds to check.
    """
    from pyspark.sql import functions as F

    path = cfg.lake.path("raw_logs")
    df = read_raw_table(spark, path)
    contract = S.impression_contract(cfg.fusion.names)
    plans = raw_log_plans(df, path, contract, cfg.etl)
    if any(p.action == S.FATAL for p in plans):
        return CheckReport(table=path, buildable=False,
                           error=str(S.schema_error(where(path), plans)),
                           columns=[_finding(p, None) for p in plans])

    # Null flags of the columns as read (before a conversion nulls an unfit value), carried
    # through conform, the rules and the duplicate ranking as extra columns.
    counted = [p for p in plans if not p.spec.nullable]
    flagged_in = df.select("*", *(F.col(f"`{p.source}`").isNull().alias(NULL_FLAG + p.spec.name)
                                  for p in counted))
    raw = conform_raw_logs(flagged_in, path, contract, cfg.etl, keep_extra=True)
    first_ds, last_ds = (day_range(raw, cfg.etl.column_map.get(S.DS, S.DS))
                         if cfg.etl.is_full_rebuild else (None, None))
    try:
        window = RunWindow.resolve(cfg.etl, first_ds, last_ds)
    except ValueError as exc:   # an empty table: nothing to build
        raise UserError(f"raw_logs {path!r}: {exc}") from None
    days = F.col(S.DS).between(F.lit(window.start), F.lit(window.end))
    with session_conf(spark, BUILD_SESSION_CONF):
        # Exactly the build's quarantine pass (mtf.etl.pipeline._build_transitions), counted
        # instead of written.
        validator = Validator(validation_context(raw, window),
                              RowRules.from_config(cfg.etl, cfg.fusion))
        try:
            flagged = validator.flag(raw, None if window.full_rebuild else days)
            counts = flagged.agg(
                F.count(F.lit(1)).alias("rows"),
                *(F.sum(F.when(F.col(S.REJECT_REASON) == r, 1).otherwise(0)).alias(r)
                  for r in REASONS),
                *(F.sum(F.col(NULL_FLAG + p.spec.name).cast("int")).alias(NULL_FLAG + p.spec.name)
                  for p in counted)).first()
        finally:
            validator.close()
    rejected = {r: int(counts[r] or 0) for r in REASONS if counts[r]}
    rows = int(counts["rows"])
    nulls = {p.spec.name: int(counts[NULL_FLAG + p.spec.name] or 0) for p in counted}
    n_rejected = sum(rejected.values())
    return CheckReport(
        table=path, buildable=True, error="",
        columns=[_finding(p, nulls.get(p.spec.name)) for p in plans],
        start_ds=window.start.isoformat(), end_ds=window.end.isoformat(),
        full_rebuild=window.full_rebuild, rows_checked=rows, rows_valid=rows - n_rejected,
        rows_rejected=n_rejected, rejected_by_reason=rejected)


def _finding(plan: S.ColumnPlan, nulls: int | None) -> ColumnFinding:
    return ColumnFinding(column=plan.spec.name, source=plan.source, found=plan.found,
                         canonical=plan.spec.type_ddl, action=plan.action, how=plan.how,
                         nullable=plan.spec.nullable, nulls=nulls)


def run(cfg: "MtfConfig") -> int:
    """CLI entry point: print the report (text, or JSON with ``check.print_json=true``), write
    it as JSON to ``check.json_out`` when set; 0 when build-transitions can build the table.

    Raises:
        SchemaMismatchError: the build would refuse the table's schema (after the report).
    """
    report = check_logs(get_spark("mtf-check-logs", cfg.spark), cfg)
    out = cfg.check.json_out
    print(json.dumps(report.to_dict(), indent=2) if cfg.check.print_json else report.text(),
          flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
            f.write("\n")
        logger.info("check-logs report written to %s", out)
    if not report.buildable:
        raise S.SchemaMismatchError(report.error)
    return 0
