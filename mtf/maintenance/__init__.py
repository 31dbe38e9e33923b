"""Delta table maintenance (``mtf maintain``): compaction and a VACUUM that keeps pinned versions.

Modules: ``config`` (the ``maintenance`` section), ``pins`` (which table versions consumers
still need: the config's pins and the versions recorded by training runs, checkpoints, exports
and the deployed policy), ``job`` (OPTIMIZE, the retention that covers every pin, VACUUM with a
dry run checked against the pinned files). docs/maintenance.md describes the policy.
"""
