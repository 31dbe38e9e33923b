"""The closed loop on top of production code: the simulator serves, the pipeline learns.

Modules: ``config`` (the ``pipeline`` section), ``closed_loop`` (``mtf pipeline``: simulate ->
build -> train -> evaluate -> deploy per day, then the comparison with the baselines),
``blackbox`` (CEM / ES searches with simulator access), ``ope_validation`` (the OPE estimators
against the simulator's ground truth). Only this package and :mod:`mtf.sim` know the simulator.
"""
