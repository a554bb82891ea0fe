"""Stages: each a module with ``run(cfg)``; ``stage=NAME`` picks one."""

from __future__ import annotations

import importlib
import logging

import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)

STAGES = ("all", "trajectories", "train_filter", "sweep", "aggregate", "evaluate", "pretrain")


def run_stage(cfg: DictConfig) -> object:
    if cfg.stage not in STAGES:
        raise ValueError(f"stage={cfg.stage!r} is unknown; allowed: {', '.join(STAGES)}")
    from pipeline.tracking import check_logger

    check_logger(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    module = importlib.import_module(f"pipeline.stages.{cfg.stage}")
    return module.run(cfg)
