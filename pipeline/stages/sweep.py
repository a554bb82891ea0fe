"""Stage ``sweep``: evaluate decode settings on the test split, one result artifact per setting.

In a single run the experiment's grid (``sweep.grid`` x ``sweep.gen_lengths``) is evaluated; in a Hydra
multirun (``-m decode=filter decode.threshold=0.5,0.9``) each job evaluates its own ``decode`` setting. Either
way every setting is a typed :class:`DecodeSettings` and a content-addressed artifact, so settings shared by two
sweeps are computed once. The oracle reuses the vanilla result's outputs as references; the filter policy uses
the ``train_filter`` artifact and ``rl_filter`` the ``train_policy`` one. A result is recomputed when the filter
or references it read have changed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts.store import (
    TIMING,
    Artifact,
    ArtifactSpec,
    Inputs,
    code_digest,
    content_key,
    folder_digest,
    write_json_atomic,
)
from pipeline.configuration.command import is_multirun, sweep_settings
from pipeline.decoding.settings import DecodeSettings
from pipeline.evaluation.setting import evaluate_setting
from pipeline.runtime.tracking import tracking
from pipeline.stages import train_filter, train_policy
from pipeline.stages.context import DECODING_CODE, StageContext, model_identity, plain

log = logging.getLogger(__name__)
CODE = (*DECODING_CODE, "models/filter.py", "pipeline/stages/sweep.py")
TIMED = ("wall_time_s", "tokens_per_s")  # metrics read off the clock: in timing.json and the manifest's figures


def result_key_settings(ctx: StageContext, setting: DecodeSettings) -> dict[str, Any]:
    keep = {k: v for k, v in setting.identity().items() if k != "filter_path"}
    return {"decode": keep, "model": model_identity(ctx.cfg.model), "task": plain(ctx.cfg.task),
            "split": ctx.cfg.sweep.split, "num_prompts": ctx.cfg.sweep.num_prompts, "device": ctx.device.type}


def spec_for(ctx: StageContext, setting: DecodeSettings) -> ArtifactSpec:
    """The result artifact's identity, computed without decoding anything."""
    inputs: dict[str, str] = {}
    if setting.learned:
        inputs["filter"] = setting.filter_path or learned_stage(setting).spec(ctx).key
    if setting.needs_references:
        inputs["references"] = spec_for(ctx, vanilla_of(setting)).key
    return ArtifactSpec("sweep", code_digest(CODE), result_key_settings(ctx, setting), inputs, ctx.labels())


def learned_stage(setting: DecodeSettings):
    """The stage whose artifact a learned setting decodes with: train_filter (filter) or train_policy."""
    return train_policy if setting.policy == "rl_filter" else train_filter


def learned_folder(setting: DecodeSettings) -> str:
    return "policy" if setting.policy == "rl_filter" else "filter"


def vanilla_of(setting: DecodeSettings) -> DecodeSettings:
    """The vanilla setting whose outputs the oracle reproduces (same window, block and steps)."""
    return setting.replace(policy="vanilla", eotp=False)


def evaluate(ctx: StageContext, setting: DecodeSettings) -> Artifact:
    """One setting's result artifact, computing upstream (vanilla references, the filter) as needed."""
    spec = spec_for(ctx, setting)
    inputs: Inputs = {}
    if setting.learned:
        if setting.filter_path:
            inputs["filter"] = folder_digest(Path(setting.filter_path))
        else:
            trained = ctx.upstream(learned_stage(setting).spec(ctx))
            inputs["filter"] = trained
            setting = setting.replace(filter_path=str(trained.path / learned_folder(setting)))
    reference = evaluate(ctx, vanilla_of(setting)) if setting.needs_references else None
    if reference is not None:  # the oracle replays the vanilla tokens alone, not its timings
        inputs["references"] = reference.manifest.get("file_digests", {}).get("tokens.pt", reference.digest)
    existing = ctx.store.load(spec)
    if existing is not None and (not ctx.forced("sweep") or spec.key in ctx.fresh) and \
            ctx.store.is_current(existing, inputs):
        log.info("sweep %s: complete, reusing %s (nothing to compute)", spec.key, describe(setting))
        return existing

    def compute(work: Path) -> dict[str, Any]:
        references = torch.load(reference.path / "tokens.pt") if reference is not None else None
        examples = ctx.task.examples(ctx.cfg.sweep.split, ctx.cfg.sweep.num_prompts)
        result = evaluate_setting(ctx.loaded, ctx.task, examples, setting, progress=bool(ctx.cfg.progress),
                                  references=references)
        torch.save(result["tokens"], work / "tokens.pt")
        m = result["metrics"]
        # what was decoded is the record; what the clock said (and where the filter lay) is kept beside it, so
        # identical runs give identical digests and a forced identical sweep leaves the aggregate current
        with open(work / "samples.jsonl", "w") as handle:
            handle.writelines(json.dumps({k: v for k, v in row.items() if k != "seconds"}) + "\n"
                              for row in result["rows"])
        recorded = {k: v for k, v in dataclasses.asdict(setting).items() if k != "filter_path"}
        write_json_atomic(work / "result.json", {"setting": recorded,
                                                 "metrics": {k: v for k, v in m.items() if k not in TIMED}})
        write_json_atomic(work / TIMING, {**{k: m[k] for k in TIMED}, "filter_path": setting.filter_path,
                                          "sample_seconds": [row["seconds"] for row in result["rows"]]})
        log.info("sweep %s: accuracy %.3f, NFE mean %.1f, %.1f tokens/s", describe(setting), m["accuracy"],
                 m["nfe_mean"], m["tokens_per_s"])
        return {**m, "policy": setting.policy, "label": describe(setting)}

    artifact = ctx.store.materialize(spec, compute, force=True, inputs=inputs)
    ctx.fresh.add(spec.key)
    return artifact


def describe(setting: DecodeSettings | dict[str, Any]) -> str:
    s = setting if isinstance(setting, dict) else dataclasses.asdict(setting)
    parts = [s["policy"]]
    if s["policy"] in ("threshold", "filter", "rl_filter", "klass", "local_leap", "credit"):
        parts.append(f"t={s['threshold'] if s['threshold'] is not None else 'validated'}")
    if s["policy"] == "rl_filter":
        parts.append(f"s={s['speed'] if s.get('speed') is not None else 'validated'}")
    if s["policy"] == "klass":
        parts.append(f"kl={s['kl_bound']}")
    if s["policy"] == "entropy_bounded":
        parts.append(f"gamma={s['gamma']}")
    if s["policy"] == "factor":
        parts.append(f"f={s['factor']}" + (" ref" if s.get("factor_rule") == "reference" else ""))
    if s.get("eotp"):
        parts.append("eotp" if s.get("eotp_rule", "committed") == "committed" else f"eotp-{s['eotp_rule']}")
    if s.get("cache", "none") != "none":
        parts.append(f"{s['cache']}-cache")
    return " ".join(parts) + f" L={s['gen_length']}"


def run(ctx: StageContext, items: list[int] | None = None) -> list[Artifact]:
    """The command's settings (``items``: those of the plan's node, by index), each evaluated or reused; the
    filter and policy they decode with come from the plan's upstream nodes."""
    settings = sweep_settings(ctx.cfg, is_multirun())
    if items is not None:
        settings = [settings[i] for i in items]
    for setting in settings:  # the filter and policy are read before any result is written (reuse_only names them)
        if setting.learned and not setting.filter_path:
            ctx.upstream(learned_stage(setting).spec(ctx))
    results = []
    with tracking(ctx.cfg, "sweep", content_key({"settings": [s.identity() for s in settings]})) as tracker:
        for setting in settings:
            results.append(evaluate(ctx, setting))
        rows = [{"label": r.figures["label"], **{k: v for k, v in r.figures.items() if isinstance(v, (int, float))}}
                for r in results]
        tracker.log_table("sweep/results", rows)
    return results
