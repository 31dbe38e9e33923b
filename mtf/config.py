"""The whole-pipeline config: one typed section per component, loaded from YAML.

``load_config(path, overrides)`` reads a YAML file (default: the embedded ``conf/local.yaml``),
applies dotted ``section.key=value`` overrides and returns a frozen :class:`MtfConfig`.
Unknown keys and wrong types raise :class:`mtf.configtools.ConfigError` naming the key.
Each component owns its section's dataclass (``mtf.sim.config.SimConfig``,
``mtf.rl.config.TrainConfig`` ...); missing sections take their defaults. A key that moved
to another section (``train.bcq.gamma`` -> ``mdp.gamma``) stops loading with a message naming
its new place (:data:`MOVED_KEYS`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from mtf.configtools import (ConfigError, apply_overrides, check_moved, from_dict, read_yaml,
                             to_dict)
from mtf.etl.config import CheckConfig, EtlConfig
from mtf.features import FeatureConfig
from mtf.fusion import FusionConfig
from mtf.loop.config import PipelineConfig
from mtf.loop.protocol import ProtocolConfig
from mtf.maintenance.config import MaintenanceConfig
from mtf.mdp import MdpConfig
from mtf.ope.config import OpeConfig
from mtf.reward import RewardConfig
from mtf.rl.config import TrainConfig
from mtf.serving.exploration import ServingConfig
from mtf.sim.config import SimConfig
from mtf.tracking import TrackingConfig

__all__ = ["ConfigError", "LakeConfig", "MtfConfig", "SparkConfig", "default_config_path",
           "load_config", "to_dict"]


@dataclass(frozen=True)
class LakeConfig:
    """Where the Delta tables and artefacts live. Relative paths are taken from the cwd."""

    root: str = "lake"
    raw_logs: str = ""        # impression logs; "" means <root>/raw_impressions
    user_profiles: str = ""   # "" means <root>/user_profiles
    quarantine: str = ""      # rejected rows with a reason; "" means <root>/quarantine
    transitions: str = ""     # "" means <root>/transitions
    models: str = ""          # checkpoints and exported policies; "" means <root>/models
    reports: str = ""         # OPE reports; "" means <root>/reports
    serving: str = ""         # deployed exploration policies (mtf deploy); "" means
                              # <root>/serving

    def path(self, name: str) -> str:
        """Absolute path of table/artefact ``name`` (a field of this class other than root)."""
        if name == "root" or name not in self.__dataclass_fields__:
            raise KeyError(f"unknown lake location {name!r}")
        explicit = getattr(self, name)
        if explicit:
            return _absolute(explicit)
        default_names = {"raw_logs": "raw_impressions"}
        return os.path.join(_absolute(self.root), default_names.get(name, name))


def _absolute(p: str) -> str:
    # Keep URIs (s3a://, hdfs://, file://) untouched; make local paths absolute so workers
    # started in another cwd see the same location.
    return p if "://" in p else os.path.abspath(p)


@dataclass(frozen=True)
class SparkConfig:
    """Settings for SparkSessions that mtf builds itself (``mtf <cmd>``, tests).

    Under spark-submit, the command line wins: ``master`` here is only used when no master was
    given, and ``conf`` entries never override a value already set on the command line.
    """

    master: str = "local[2]"
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.shuffle_partitions <= 0:
            raise ValueError(f"shuffle_partitions must be > 0, got {self.shuffle_partitions}")


@dataclass(frozen=True)
class MtfConfig:
    seed: int = 7
    lake: LakeConfig = field(default_factory=LakeConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    mdp: MdpConfig = field(default_factory=MdpConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    etl: EtlConfig = field(default_factory=EtlConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ope: OpeConfig = field(default_factory=OpeConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)


# Keys that moved when each setting went to the section that owns it: old key -> new key.
MOVED_KEYS = {
    "train.bcq.gamma": "mdp.gamma",
    "ope.gamma": "mdp.gamma (one discount for the learners, the OPE and the simulator)",
    **{f"train.bcq.{k}": f"train.common.{k}"
       for k in ("tau", "target_update_every", "hidden", "actor_lr", "critic_lr")},
    "sim.exploration": "serving (the logging policy: baseline_action, shares, noise)",
    "ope.baseline_action": "serving.baseline_action",
    "ope.truth_sessions": ("removed: the OPE job needs no simulator; compare estimators with "
                           "the truth with `python -m mtf.loop.ope_validation`"),
}


def default_config_path() -> str:
    """The embedded default, ``conf/local.yaml`` next to the package (or $MTF_CONF_DIR)."""
    conf_dir = os.environ.get("MTF_CONF_DIR") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    return os.path.join(conf_dir, "local.yaml")


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> MtfConfig:
    """Load ``path`` (default: embedded local.yaml), apply overrides, validate."""
    data = read_yaml(path or default_config_path())
    data = apply_overrides(data, overrides)
    check_moved(data, MOVED_KEYS)
    return from_dict(MtfConfig, data)
