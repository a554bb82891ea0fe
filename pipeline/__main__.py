"""Hydra entry point: ``python -m pipeline +experiment=NAME [stage=...] [overrides]``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipeline.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> object:
    from pipeline.stages import run_stage

    return run_stage(cfg)


if __name__ == "__main__":
    main()
