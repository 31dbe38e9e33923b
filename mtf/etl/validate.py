"""Row rules: every impression row either passes or gets exactly one reject reason.

Stage :func:`add_reject_reason` adds the nullable string column ``reject_reason`` (the first rule
that fails, in the order of :data:`REASONS`) instead of raising: bad rows are data, routed to the
quarantine table by the job. Schema problems (a missing or mistyped column) are not row rules;
they fail the job before anything is written (:func:`mtf.contract.conform`). A value that does
not fit its column's canonical type (a bigint position above the int range) is a row problem:
conform nulls it and names it in ``cast_reject_reason``, which comes first here
(``out_of_range_<column>``).

Duplicates: rows that pass every other rule and share an ``event_id`` within one ``ds``
partition are duplicates; the first by (ts, user_id, request_id, position, item_id, play_time_s,
duration_s) is kept, the others get ``duplicate_event_id``. (A redelivered event has the same ts,
hence the same ds; rows with one event_id on different days are different events and both kept.)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING

from mtf import contract as S

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from mtf.etl.config import EtlConfig
    from mtf.fusion import FusionConfig

# Reasons, in the order the rules are checked (a row gets the first that applies).
ID_COLUMNS = (S.EVENT_ID, S.USER_ID, S.REQUEST_ID, S.ITEM_ID)
FEEDBACK_COLUMNS = (S.PLAY_TIME_S, S.DURATION_S, *S.INTERACTION_COLUMNS)
NULL_TS = "null_ts"
NULL_POSITION = "null_position"
DS_MISMATCH = "ds_mismatch"                  # ds null or != date(ts) in UTC
NULL_FEEDBACK = "null_feedback"              # play_time_s, duration_s or an interaction null
NEGATIVE_PLAY_TIME = "negative_play_time"
ABSURD_PLAY_TIME = "absurd_play_time"        # > max_play_time_s, NaN or infinite
INVALID_DURATION = "invalid_duration"        # negative, NaN or infinite
PLAY_TIME_EXCEEDS_DURATION = "play_time_exceeds_duration"
INVALID_INTERACTION = "invalid_interaction"  # an interaction flag not 0/1
NULL_FUSION_WEIGHTS = "null_fusion_weights"
FUSION_WEIGHTS_LENGTH = "fusion_weights_length"
FUSION_WEIGHTS_OUT_OF_RANGE = "fusion_weights_out_of_range"  # null/NaN element or outside [lo, hi]
UNKNOWN_EXPLORE_GROUP = "unknown_explore_group"
DUPLICATE_EVENT_ID = "duplicate_event_id"

# A value outside its canonical type (mtf.contract.conform): first, since its value is now null.
OUT_OF_RANGE = tuple(S.out_of_range_reason(c) for c in S.RANGE_CHECKED_COLUMNS)

REASONS = (*OUT_OF_RANGE, *(f"null_{c}" for c in ID_COLUMNS), NULL_TS, NULL_POSITION,
           DS_MISMATCH, NULL_FEEDBACK, NEGATIVE_PLAY_TIME, ABSURD_PLAY_TIME, INVALID_DURATION,
           PLAY_TIME_EXCEEDS_DURATION, INVALID_INTERACTION, NULL_FUSION_WEIGHTS,
           FUSION_WEIGHTS_LENGTH, FUSION_WEIGHTS_OUT_OF_RANGE, UNKNOWN_EXPLORE_GROUP,
           DUPLICATE_EVENT_ID)

# Order that picks the kept copy among duplicates (deterministic for differing copies).
DEDUP_ORDER = (S.TS, S.USER_ID, S.REQUEST_ID, S.POSITION, S.ITEM_ID, S.PLAY_TIME_S, S.DURATION_S)


@dataclass(frozen=True)
class RowRules:
    """The thresholds the row rules use (from ``cfg.etl`` and ``cfg.fusion``)."""

    weights_lo: tuple[float, ...]      # per fusion task, alpha at action -1
    weights_hi: tuple[float, ...]      # per fusion task, alpha at action +1
    explore_groups: tuple[str, ...] = S.EXPLORE_GROUPS
    max_play_time_s: float = 21_600.0
    max_play_to_duration: float = 10.0
    weight_tolerance: float = 1e-6

    def __post_init__(self) -> None:
        if len(self.weights_lo) != len(self.weights_hi) or not self.weights_lo:
            raise ValueError(f"weights_lo and weights_hi must have the same non-zero length, "
                             f"got {len(self.weights_lo)} and {len(self.weights_hi)}")

    @property
    def k(self) -> int:
        return len(self.weights_lo)

    @classmethod
    def from_config(cls, etl: "EtlConfig", fusion: "FusionConfig") -> "RowRules":
        return cls(weights_lo=tuple(float(x) for x in fusion.lo),
                   weights_hi=tuple(float(x) for x in fusion.hi),
                   explore_groups=tuple(etl.explore_groups),
                   max_play_time_s=etl.max_play_time_s,
                   max_play_to_duration=etl.max_play_to_duration,
                   weight_tolerance=etl.weight_tolerance)


def _blank(col: "Column") -> "Column":
    return col.isNull() | (col == "")


def _row_rules(rules: RowRules) -> list[tuple["Column", str]]:
    """(failing condition, reason) pairs in check order. Conditions are null-safe."""
    from pyspark.sql import functions as F

    inf = F.lit(float("inf"))
    play, dur = F.col(S.PLAY_TIME_S), F.col(S.DURATION_S)
    fw = F.col(S.FUSION_WEIGHTS)
    tol = rules.weight_tolerance
    bad_weight = reduce(lambda a, b: a | b, [
        F.get(fw, i).isNull() | F.isnan(F.get(fw, i))
        | (F.get(fw, i) < lo - tol) | (F.get(fw, i) > hi + tol)
        for i, (lo, hi) in enumerate(zip(rules.weights_lo, rules.weights_hi))])
    # Spark orders NaN above every number, so "> max" already catches NaN and +inf play times.
    return [
        *((_blank(F.col(c)), f"null_{c}") for c in ID_COLUMNS),
        (F.col(S.TS).isNull(), NULL_TS),
        (F.col(S.POSITION).isNull(), NULL_POSITION),
        (F.col(S.DS).isNull() | (F.col(S.DS) != F.to_date(F.col(S.TS))), DS_MISMATCH),
        (reduce(lambda a, b: a | b, [F.col(c).isNull() for c in FEEDBACK_COLUMNS]),
         NULL_FEEDBACK),
        (play < 0, NEGATIVE_PLAY_TIME),
        (play > rules.max_play_time_s, ABSURD_PLAY_TIME),
        (F.isnan(dur) | (dur < 0) | (dur == inf), INVALID_DURATION),
        ((dur > 0) & (play > dur * rules.max_play_to_duration), PLAY_TIME_EXCEEDS_DURATION),
        (reduce(lambda a, b: a | b, [~F.col(c).isin(0, 1) for c in S.INTERACTION_COLUMNS]),
         INVALID_INTERACTION),
        (fw.isNull(), NULL_FUSION_WEIGHTS),
        (F.size(fw) != rules.k, FUSION_WEIGHTS_LENGTH),
        (bad_weight, FUSION_WEIGHTS_OUT_OF_RANGE),
        (F.col(S.EXPLORE_GROUP).isNotNull() & ~F.col(S.EXPLORE_GROUP).isin(*rules.explore_groups),
         UNKNOWN_EXPLORE_GROUP),
    ]


def add_row_reason(df: "DataFrame", *, rules: RowRules) -> "DataFrame":
    """Add ``reject_reason`` from the per-row rules only (no duplicate check; narrow).

    Requires the impression-contract columns (:func:`mtf.contract.impression_contract`);
    consumes conform's ``cast_reject_reason`` when present (it wins over the rules).
    """
    from pyspark.sql import functions as F

    rule_list = _row_rules(rules)
    reason = F.when(rule_list[0][0], F.lit(rule_list[0][1]))
    for cond, name in rule_list[1:]:  # one flat CASE WHEN: the first failing rule wins
        reason = reason.when(cond, F.lit(name))
    reason = reason.otherwise(F.lit(None).cast("string"))
    if S.CAST_REJECT_REASON in df.columns:
        reason = F.coalesce(F.col(S.CAST_REJECT_REASON), reason)
        return df.withColumn(S.REJECT_REASON, reason).drop(S.CAST_REJECT_REASON)
    return df.withColumn(S.REJECT_REASON, reason)


def _rank_copies(flagged: "DataFrame") -> "DataFrame":
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    is_ok = F.col(S.REJECT_REASON).isNull()
    copies = Window.partitionBy(S.DS, S.EVENT_ID, is_ok).orderBy(*DEDUP_ORDER)
    return flagged.withColumn(
        S.REJECT_REASON,
        F.when(is_ok & (F.row_number().over(copies) > 1), F.lit(DUPLICATE_EVENT_ID))
         .otherwise(F.col(S.REJECT_REASON)))


DUP_KEY_HASH = "dup_key_hash"     # xxhash64(ds, event_id): the candidate-key column


def _key_hash() -> "Column":
    from pyspark.sql import functions as F
    return F.xxhash64(S.DS, S.EVENT_ID)


def candidate_duplicate_keys(df: "DataFrame") -> "DataFrame":
    """``dup_key_hash`` values held by more than one row, valid or not.

    A superset of the (ds, event_id) keys with more than one valid row, read from two columns
    instead of every column the row rules use, and aggregated as a 64-bit hash instead of a
    string (faster to shuffle and to group): a hash collision only makes more rows candidates,
    and :func:`ranked_candidate_rows` ranks candidates by the exact (ds, event_id), valid rows
    only, so extra candidates change nothing.
    """
    from pyspark.sql import functions as F

    return (df.where(F.col(S.EVENT_ID).isNotNull() & F.col(S.DS).isNotNull())
            .groupBy(_key_hash().alias(DUP_KEY_HASH)).agg(F.count(F.lit(1)).alias("_n"))
            .where(F.col("_n") > 1).select(DUP_KEY_HASH))


def mark_duplicates(flagged: "DataFrame") -> "DataFrame":
    """Set ``reject_reason`` = duplicate_event_id on every copy but the first (see module doc).

    Ranks every row of ``flagged`` (rows with ``reject_reason`` from :func:`add_row_reason`):
    one shuffle by (ds, event_id). When the :func:`candidate_duplicate_keys` are few, the job
    instead ranks only their rows (:func:`ranked_candidate_rows`) and passes the others through
    (:func:`rows_without_candidates`): the same result without shuffling every row.
    """
    return _rank_copies(flagged)


def rows_without_candidates(flagged: "DataFrame", candidates: "DataFrame") -> "DataFrame":
    """The rows of ``flagged`` whose key hash is not a candidate (broadcast anti join): they
    are no duplicates, their ``reject_reason`` stands."""
    from pyspark.sql import functions as F

    return (flagged.withColumn(DUP_KEY_HASH, _key_hash())
            .join(F.broadcast(candidates.select(DUP_KEY_HASH)), on=DUP_KEY_HASH, how="left_anti")
            .select(*flagged.columns))


def ranked_candidate_rows(flagged: "DataFrame", candidates: "DataFrame") -> "DataFrame":
    """The rows of ``flagged`` whose key hash is a candidate, with duplicates marked (a few
    rows: a broadcast join, then a window over them only)."""
    from pyspark.sql import functions as F

    rows = (flagged.withColumn(DUP_KEY_HASH, _key_hash())
            .join(F.broadcast(candidates.select(DUP_KEY_HASH)), on=DUP_KEY_HASH, how="left_semi")
            .select(*flagged.columns))
    return _rank_copies(rows)


def add_reject_reason(df: "DataFrame", *, rules: RowRules) -> "DataFrame":
    """Add ``reject_reason`` (null = valid) to impression rows: row rules, then duplicates.

    Requires the impression-contract columns (:func:`mtf.contract.impression_contract`);
    adds ``reject_reason`` (string, one of :data:`REASONS` or null). Row count is unchanged.
    The job runs the same two stages but checks for duplicate keys first, so that the common
    case (none) costs no shuffle.
    """
    return mark_duplicates(add_row_reason(df, rules=rules))
