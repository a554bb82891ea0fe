"""Stage ``evaluate``: decode a task split under the chosen ``decode`` setting and print its metrics.

The metrics are the stage's result, so they go to stdout as a small table; the log line on stderr keeps them
beside the rest of the run's log.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.configuration.command import decode_settings
from pipeline.evaluation.setting import evaluate_setting
from pipeline.stages.context import StageContext
from pipeline.stages.sweep import describe

log = logging.getLogger(__name__)


def run(ctx: StageContext, items: list[int] | None = None) -> dict:
    cfg = ctx.cfg
    settings, task, loaded = decode_settings(cfg), ctx.task, ctx.loaded
    examples = task.examples(cfg.eval.split, cfg.eval.num_prompts)
    result = evaluate_setting(loaded, task, examples, settings, progress=cfg.progress)
    m = result["metrics"]
    log.info(
        "%s gen_length=%d block=%d eotp=%s: accuracy %.3f, full match %.3f, NFE mean %.1f (p50 %s, p90 %s), "
        "%.1f tokens/s over %.1f s",
        cfg.decode.policy, cfg.decode.gen_length, cfg.decode.block_length, cfg.decode.eotp, m["accuracy"],
        m["full_match"], m["nfe_mean"], m["nfe_p50"], m["nfe_p90"], m["tokens_per_s"], m["wall_time_s"],
    )
    heading = f"{cfg.model.name} on {task.label} {cfg.eval.split}: {describe(settings)} block={settings.block_length}"
    print(table(heading, m))
    return m


def table(heading: str, m: dict[str, Any]) -> str:
    """The metrics as a user reads them: one named figure a line under the setting they were measured with."""
    lines = [
        ("prompts", f"{m['num_samples']}"),
        ("accuracy", f"{100 * m['accuracy']:.1f}%"),
        ("full match", f"{100 * m['full_match']:.1f}%"),
        ("NFE", f"mean {m['nfe_mean']:.1f}, p50 {m['nfe_p50']:g}, p90 {m['nfe_p90']:g}"),
        ("tokens/s", f"{m['tokens_per_s']:.1f}"),
        ("wall time", f"{m['wall_time_s']:.1f} s"),
        *((name, f"{value:.4g}") for name, value in m.items() if "," in name),  # a scorer's own, by filter
    ]
    width = max(11, *(len(name) for name, _ in lines))
    return "\n".join([heading, *(f"  {name:<{width}} {value}" for name, value in lines)])
