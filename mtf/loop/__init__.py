"""The closed loop on top of production code: the simulator serves, the pipeline learns.

Modules: ``config`` (the ``pipeline`` section), ``closed_loop`` (``mtf pipeline``: simulate ->
build -> train -> evaluate -> deploy per day, then the comparison with the baselines),
``blackbox`` (CEM / ES searches with simulator access), ``ope_validation`` (the OPE estimators
against the simulator's ground truth), ``in_memory_training`` (learners trained on simulated
transitions without Spark), ``learning_benchmark`` (learners against the logging policy and the
CEM weights per protocol world: benchmarks/heldout_learning.py). Only this package and
:mod:`mtf.sim` know the simulator.
"""
