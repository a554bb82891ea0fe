"""Stage ``evaluate``: decode a task split under the chosen ``decode`` setting and print its metrics."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from pipeline.config import resolve_device
from pipeline.evaluation import evaluate_setting
from pipeline.modeling import load_model
from pipeline.plan import decode_settings
from pipeline.tasks.registry import build_task

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    settings = decode_settings(cfg)
    task = build_task(cfg.task)
    loaded = load_model(cfg.model, resolve_device(cfg.device))
    examples = task.examples(cfg.eval.split, cfg.eval.num_prompts)
    result = evaluate_setting(loaded, task, examples, settings, progress=cfg.progress)
    m = result["metrics"]
    log.info(
        "%s gen_length=%d block=%d eotp=%s: accuracy %.3f, full match %.3f, NFE mean %.1f (p50 %s, p90 %s), "
        "%.1f tokens/s over %.1f s",
        cfg.decode.policy, cfg.decode.gen_length, cfg.decode.block_length, cfg.decode.eotp, m["accuracy"],
        m["full_match"], m["nfe_mean"], m["nfe_p50"], m["nfe_p90"], m["tokens_per_s"], m["wall_time_s"],
    )
    return m
