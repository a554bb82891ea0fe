"""Stage ``all`` (the default): trajectories -> train_filter -> sweep -> aggregate, each reused when complete.

Every stage's settings are validated before the first one starts, so a typo in the sweep grid fails in a
second rather than after trajectory generation.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from pipeline.artifacts import Artifact
from pipeline.stages import aggregate, sweep, train_filter, trajectories
from pipeline.stages.common import StageContext

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Artifact:
    for stage in (trajectories, train_filter, sweep):
        stage.validate(cfg)
    if cfg.trajectories.shard is not None:
        raise ValueError("trajectories.shard is for running stage=trajectories as array jobs; drop it for stage=all")
    ctx = StageContext(cfg)  # one model load for the whole pipeline
    trajectories.run(cfg, ctx)
    train_filter.run(cfg, ctx)
    sweep.run(cfg, ctx)
    return aggregate.run(cfg, ctx)
