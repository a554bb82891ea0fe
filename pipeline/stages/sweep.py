"""Stage ``sweep``: evaluate decode settings on the test split, one result artifact per setting.

In a single run the experiment's grid (``sweep.grid`` x ``sweep.gen_lengths``) is evaluated; in a Hydra
multirun (``-m decode=filter decode.threshold=0.5,0.9``) each job evaluates its own ``decode`` setting. Either
way every setting is a content-addressed artifact, so settings shared by two sweeps are computed once. The
oracle reuses the vanilla result's outputs as references; the filter policy uses the ``train_filter`` artifact.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.artifacts import Artifact, ArtifactSpec, content_key, write_json_atomic
from pipeline.decoding import DecodeSettings
from pipeline.decoding.policies import check_threshold, policy_class
from pipeline.evaluation import build_policy, decode_settings, evaluate_setting
from pipeline.stages import train_filter
from pipeline.stages.common import StageContext, model_identity, plain
from pipeline.tracking import tracking

log = logging.getLogger(__name__)
VERSION = 1
SPEED_ONLY = ("batch_size",)  # changes speed, not outputs; kept in the key because speed is a result


POLICY_PARAMETERS = {"threshold": ("threshold",), "filter": ("threshold", "filter_path"), "factor": ("factor",)}
LOOP_FIELDS = tuple(f.name for f in dataclasses.fields(DecodeSettings))


def canonical(setting: dict[str, Any]) -> dict[str, Any]:
    """Only what the policy reads, so a setting has one key however it was written (grid, multirun, oracle)."""
    keep = ("policy", *LOOP_FIELDS, *POLICY_PARAMETERS.get(setting["policy"], ()))
    return {k: setting.get(k) for k in keep}


def expand_grid(cfg: DictConfig) -> list[dict[str, Any]]:
    """Decode configs for every grid entry, list-valued fields expanded as a product, for every gen length."""
    base = plain(cfg.decode)
    settings = []
    for gen_length in cfg.sweep.gen_lengths:
        for entry in cfg.sweep.grid:
            entry = plain(entry)
            lists = {k: v for k, v in entry.items() if isinstance(v, list)}
            for values in itertools.product(*lists.values()):
                setting = {**base, **entry, **dict(zip(lists, values)), "gen_length": gen_length,
                           "block_length": cfg.sweep.block_length, "steps": None}
                settings.append(canonical(setting))
    return settings


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def planned_settings(cfg: DictConfig) -> list[dict[str, Any]]:
    return [canonical(plain(cfg.decode))] if is_multirun() else expand_grid(cfg)


def check_decode(setting: dict[str, Any]) -> None:
    """Every decode setting is checked before any work; a filter's weights are checked when it is loaded."""
    decode_cfg = OmegaConf.create(setting)
    decode_settings(decode_cfg)
    if policy_class(decode_cfg.policy).name == "filter":
        check_threshold(decode_cfg.threshold, "decode.threshold")
    else:
        build_policy(decode_cfg, torch.device("cpu"))


def validate(cfg: DictConfig) -> None:
    check_decode(plain(cfg.decode))  # the user's decode choice is validated even when the grid overrides it
    for setting in planned_settings(cfg):
        check_decode(setting)
    if any(s["policy"] == "filter" and not s.get("filter_path") for s in planned_settings(cfg)):
        train_filter.validate(cfg)


def result_key_settings(ctx: StageContext, setting: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in setting.items() if k != "filter_path"}
    return {"decode": keep, "model": model_identity(ctx.cfg.model), "task": plain(ctx.cfg.task),
            "split": ctx.cfg.sweep.split, "num_prompts": ctx.cfg.sweep.num_prompts, "device": ctx.device.type}


def spec_for(ctx: StageContext, setting: dict[str, Any]) -> ArtifactSpec:
    """The result artifact's identity, computed without decoding anything."""
    inputs: dict[str, str] = {}
    if setting["policy"] == "filter":
        inputs["filter"] = setting.get("filter_path") or train_filter.spec(ctx).key
    if policy_class(setting["policy"]).needs_references:
        inputs["references"] = spec_for(ctx, vanilla_of(setting)).key
    return ArtifactSpec("sweep", VERSION, result_key_settings(ctx, setting), inputs, ctx.labels())


def vanilla_of(setting: dict[str, Any]) -> dict[str, Any]:
    """The vanilla setting whose outputs the oracle reproduces (same window, block and steps)."""
    return canonical({**setting, "policy": "vanilla", "eotp": False})


def evaluate(ctx: StageContext, setting: dict[str, Any]) -> Artifact:
    """One setting's result artifact, computing upstream (vanilla references, the filter) as needed."""
    spec = spec_for(ctx, setting)
    references = None
    if setting["policy"] == "filter" and not setting.get("filter_path"):
        trained = train_filter.ensure(ctx, upstream=True)
        setting = {**setting, "filter_path": str(trained.path / "filter")}
    if policy_class(setting["policy"]).needs_references:
        references = torch.load(evaluate(ctx, vanilla_of(setting)).path / "tokens.pt")
    existing = ctx.store.load(spec)
    if existing is not None and (not ctx.forced("sweep") or spec.key in ctx.fresh):
        log.info("sweep %s: complete, reusing %s (nothing to compute)", spec.key, describe(setting))
        return existing

    def compute(work: Path) -> dict[str, Any]:
        examples = ctx.task.examples(ctx.cfg.sweep.split, ctx.cfg.sweep.num_prompts)
        result = evaluate_setting(ctx.loaded, ctx.task, examples, OmegaConf.create(setting),
                                  progress=bool(ctx.cfg.progress), references=references)
        torch.save(result["tokens"], work / "tokens.pt")
        with open(work / "samples.jsonl", "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in result["rows"])
        write_json_atomic(work / "result.json", {"setting": setting, "metrics": result["metrics"]})
        m = result["metrics"]
        log.info("sweep %s: accuracy %.3f, NFE mean %.1f, %.1f tokens/s", describe(setting), m["accuracy"],
                 m["nfe_mean"], m["tokens_per_s"])
        return {**m, "policy": setting["policy"], "label": describe(setting)}

    artifact = ctx.store.materialize(spec, compute, force=True)
    ctx.fresh.add(spec.key)
    return artifact


def describe(setting: dict[str, Any]) -> str:
    parts = [setting["policy"]]
    if setting["policy"] in ("threshold", "filter"):
        parts.append(f"t={setting['threshold']}")
    if setting["policy"] == "factor":
        parts.append(f"f={setting['factor']}")
    if setting.get("eotp"):
        parts.append("eotp")
    if setting.get("cache", "none") != "none":
        parts.append(f"{setting['cache']}-cache")
    return " ".join(parts) + f" L={setting['gen_length']}"


def run(cfg: DictConfig, ctx: StageContext | None = None) -> list[Artifact]:
    validate(cfg)
    ctx = ctx or StageContext(cfg)
    settings = planned_settings(cfg)
    if any(s["policy"] == "filter" and not s.get("filter_path") for s in settings):
        train_filter.ensure(ctx, upstream=True)  # fails early under reuse_only, before any result is written
    results = []
    with tracking(cfg, "sweep", content_key({"settings": settings})) as tracker:
        for setting in settings:
            results.append(evaluate(ctx, setting))
        rows = [{"label": r.figures["label"], **{k: v for k, v in r.figures.items() if isinstance(v, (int, float))}}
                for r in results]
        tracker.log_table("sweep/results", rows)
    return results
