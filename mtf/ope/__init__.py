"""Off-policy evaluation of fusion policies (docs/method.md section 7; docs/ope.md).

Entry points (import them from their modules; importing this package loads nothing heavy):

* ``mtf evaluate`` / :func:`mtf.ope.job.run` -- the Spark job over the transitions table;
* :func:`mtf.ope.gate.evaluate_policies` -- the offline gate the closed loop calls: named
  export directories (None = logging baseline) in, values and go / no-go decisions out;
* :func:`mtf.ope.job.evaluate_table` -- the same, from a SparkSession, returning the result;
* :func:`mtf.ope.evaluate.evaluate_arrays` -- the single-process path over numpy arrays;
* :func:`mtf.ope.truth.compare_with_truth` -- estimators against true values from any
  :class:`~mtf.ope.truth.GroundTruth` (the simulator's: :mod:`mtf.loop.ope_validation`).

Modules: ``config`` (OpeConfig), ``policies`` (target policies, target density), ``fqe``
(plain / conservative FQE), ``estimators`` (per-session statistics and estimator formulas),
``bootstrap`` (Poisson bootstrap), ``ensemble`` (bootstrapped FQE members, MLP),
``linear_fqe`` (closed-form linear members), ``support`` (the logged actions' reach of a
policy), ``rules`` (the gate's decision rules), ``score`` (row scoring, Spark aggregation),
``results`` (intervals, decisions), ``evaluate`` (orchestration), ``report``, ``job``,
``gate``, ``truth``, ``accuracy`` (estimators against the truth).
"""
from mtf.ope.config import ESTIMATORS, LOGGING_POLICY, OpeConfig

__all__ = ["ESTIMATORS", "LOGGING_POLICY", "OpeConfig"]
