"""MTF world: a seeded recommender simulator with ground-truth long-term value.

Modules (import what you need; importing has no side effects):

* ``config``: :class:`~mtf.sim.config.SimConfig` (the ``sim:`` section).
* ``schema``: the impression-log / user-profile contract (column names, Spark/Arrow schemas).
* ``catalog``, ``users``, ``world``: items, users and the true response / MTL / satisfaction
  model; :class:`~mtf.sim.world.World` bundles them for one seed.
* ``state``: :class:`~mtf.sim.state.StateTracker`, incremental ``mtf.features`` states.
* ``policies``, ``logging_policy``: fusion policies (states -> normalised actions) and the
  exploring logging policy with exact log-densities.
* ``rollout``: the vectorised session engine.
* ``generate``: in-process log generation; ``job``: the Spark job behind ``mtf simulate``.
* ``evaluate``: ground truth: :func:`~mtf.sim.evaluate.evaluate`,
  :func:`~mtf.sim.evaluate.compare` (paired, common random numbers).

See docs/simulator.md.
"""
