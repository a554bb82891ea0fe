"""Stages: each a module with ``run(cfg)``; ``stage=NAME`` picks one."""

from __future__ import annotations

import importlib
import logging

import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)

STAGES = ("pretrain", "evaluate")


def run_stage(cfg: DictConfig) -> object:
    if cfg.stage not in STAGES:
        raise ValueError(f"stage={cfg.stage!r} is unknown; allowed: {', '.join(STAGES)}")
    torch.set_num_threads(int(cfg.threads))
    module = importlib.import_module(f"pipeline.stages.{cfg.stage}")
    return module.run(cfg)
