"""Stages: each a module with ``run(cfg)``; ``stage=NAME`` picks one. The config is validated before this."""

from __future__ import annotations

import importlib
import logging

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def run_stage(cfg: DictConfig) -> object:
    import torch

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.launcher.kind == "slurm" and cfg.stage != "status":
        from pipeline.cluster import submit

        return submit(cfg)
    module = importlib.import_module(f"pipeline.stages.{cfg.stage}")
    return module.run(cfg)
