"""The ``mtf`` command line, also behind every ``jobs/<name>.py`` spark-submit entry point.

Every subcommand has the same shape::

    mtf <command> [--conf-file conf/local.yaml] [section.key=value ...]

It loads the typed config (default: the embedded ``conf/local.yaml``), applies the overrides,
sets up logging and calls one library function ``run(cfg) -> int``. The command modules are
imported only when their command runs, so ``mtf --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Callable, NamedTuple, Sequence

logger = logging.getLogger(__name__)


class Command(NamedTuple):
    target: str   # "module:function", function(cfg: MtfConfig) -> int
    help: str


COMMANDS: dict[str, Command] = {
    "simulate": Command("mtf.sim.job:run",
                        "simulate impression logs + user profiles into Delta (Spark)"),
    "build-transitions": Command("mtf.etl.job:run",
                                 "validate, sessionize, featurize, reward -> transitions (Spark)"),
    "check-logs": Command("mtf.etl.check:run",
                          "check the impression logs against the input contract; writes "
                          "nothing (Spark)"),
    "calibrate-rewards": Command("mtf.etl.calibrate:run",
                                 "fit reward weights against future dwell time (Spark ML)"),
    "train": Command("mtf.rl.launch:run",
                     "train the fusion policy (train.algo: iql, bcq, ...) from the transitions "
                     "table"),
    "export": Command("mtf.rl.job:run_export",
                      "export a checkpoint as a TorchScript policy for serving"),
    "evaluate": Command("mtf.ope.job:run",
                        "conservative off-policy evaluation + reference estimators (Spark)"),
    "deploy": Command("mtf.serving.deploy:run",
                      "act on the gate of report ope.run_id: GO deploys the selected policy "
                      "(wrapped for exploration), NO-GO keeps the deployed one"),
    "maintain": Command("mtf.maintenance.job:run",
                        "compact the lake's Delta tables and VACUUM them, keeping every "
                        "pinned version readable (Spark)"),
    "pipeline": Command("mtf.loop.closed_loop:run",
                        "closed loop: simulate -> build -> train -> evaluate -> deploy, per day"),
    "show-config": Command("mtf.cli:show_config", "print the resolved config as JSON"),
    "jars": Command("mtf.cli:print_jars",
                    "print the cached Delta jars, comma separated (for spark-submit --jars)"),
}


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtf",
        description="Learn multi-task fusion weights with batch RL (BatchRL-MTF).",
        epilog="Each command: mtf <command> [--conf-file F] [section.key=value ...]")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        p.add_argument("--conf-file", type=str, default=None,
                       help="YAML config (default: the embedded conf/local.yaml)")
        p.add_argument("--set", type=str, action="append", default=[], dest="set",
                       metavar="KEY=VALUE", help="config override (repeatable)")
        p.add_argument("overrides", nargs="*", type=str, metavar="KEY=VALUE",
                       help="config overrides, e.g. train.batch_size=512")
        p.add_argument("--log-level", type=str.upper, default="INFO", choices=LOG_LEVELS,
                       help="DEBUG also prints the traceback of a user error")
    return parser


def _version() -> str:
    from mtf import __version__
    return f"mtf {__version__}"


def resolve(target: str) -> Callable[..., int]:
    from mtf.errors import UserError

    module, func = target.split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise UserError(f"this command is not available in this build ({module} "
                            f"is missing)") from None
        raise
    return getattr(mod, func)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user mistake (:class:`mtf.errors.UserError`) exits 2 with one line."""
    from mtf.errors import EXIT_USER_ERROR, UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from mtf.config import load_config
    from mtf.log import setup_logging

    # Under torchrun every rank logs; tag lines with the rank (torchrun owns RANK).
    rank = os.environ.get("RANK")
    setup_logging(args.log_level, rank=int(rank) if rank is not None else None)
    try:
        cfg = load_config(args.conf_file, [*args.set, *args.overrides])
        run = resolve(COMMANDS[args.command].target)
        return int(run(cfg) or 0)
    except UserError as exc:
        report_user_error(args.command, exc)
        return EXIT_USER_ERROR


def report_user_error(command: str, exc: BaseException) -> None:
    """``mtf <command>: error: <message>`` on stderr, in one line; the traceback (above it)
    only at --log-level debug: the message names what to fix, a traceback is for bugs."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("traceback of the error below", exc_info=exc)
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"mtf {command}: error: {message}", file=sys.stderr)


def show_config(cfg: object) -> int:
    from mtf.configtools import to_dict
    print(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
    return 0


def print_jars(cfg: object) -> int:
    from mtf.spark import require_delta_jars
    print(",".join(require_delta_jars()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
