"""Stage ``trajectories``: decode training prompts and record, at every step, the current block's features and
labels (1 where the current prediction already equals the final output) as ``datasets`` Arrow shards.

The reference output is the model's own vanilla decode. Under ``trajectories.policy=egp`` (the paper's recipe)
prompts are decoded again under the oracle while recording; under ``vanilla`` the reference decode itself is
recorded. Shards (``trajectories.shard=i``) are written atomically inside the artifact's work directory, so
array jobs can split the work and a killed run resumes shard by shard; the artifact is finalised once every
shard exists.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline.artifacts.store import Artifact, ArtifactSpec, atomic_dir, code_digest, write_json_atomic
from pipeline.decoding.features import HISTORY_FEATURES, block_features
from pipeline.decoding.policies import ExtremelyGreedy, LearnedFilter, Vanilla
from pipeline.decoding.settings import DecodeSettings
from pipeline.decoding.step import Policy, StepView
from pipeline.evaluation.setting import reference_outputs, run_decode
from pipeline.learning.trajectories import check_finite, load_shards, shard_name
from pipeline.stages.context import DECODING_CODE, StageContext, model_identity, plain
from pipeline.tasks.base import Task
from pipeline.tasks.prompts import encode_prompt
from pipeline.tasks.registry import build_task

log = logging.getLogger(__name__)
CODE = (*DECODING_CODE, "pipeline/stages/trajectories.py", "pipeline/learning/trajectories.py")


def settings(cfg: DictConfig) -> DecodeSettings:
    t = cfg.trajectories
    return DecodeSettings(gen_length=t.gen_length, block_length=t.block_length, steps=t.steps,
                          batch_size=t.batch_size)


@dataclass(frozen=True)
class Round:
    """Which trajectories: round 0 is the oracle's (or vanilla's); round r >= 1 decodes the same prompts with the
    filter trained on rounds 0..r-1 (``filter``) and labels what it visits against round 0's references."""

    index: int = 0
    filter: Artifact | None = None
    base: Artifact | None = None  # round 0, whose references.pt are the labels' reference outputs


def spec(ctx: StageContext, round_: int = 0, filter_key: str | None = None) -> ArtifactSpec:
    t = ctx.cfg.trajectories
    settings_ = {
        "model": model_identity(ctx.cfg.model), "task": plain(ctx.cfg.task), "prompts": plain(t.task),
        "policy": t.policy, "split": t.split,
        "num_prompts": t.num_prompts, "gen_length": t.gen_length, "block_length": t.block_length,
        "steps": t.steps, "features": list(t.features), "num_shards": t.num_shards,
    }
    inputs = {}
    if round_:
        settings_["on_policy_round"] = round_
        inputs["filter"] = filter_key
    return ArtifactSpec("trajectories", code_digest(CODE), settings_, inputs, labels=ctx.labels())


class TrajectoryRecorder:
    """Observer that keeps, per (sample, block, step), the block's features, predictions and mask state.

    It stores each step's batch tensors as they come and stacks them once at the end, so recording costs a few
    tensor copies per step rather than Python work per row."""

    def __init__(self, features: tuple[str, ...], steps_per_block: int) -> None:
        self.features, self.steps_per_block = features, steps_per_block
        self.steps: list[dict[str, torch.Tensor]] = []

    def __call__(self, view: StepView, commit: torch.Tensor) -> None:
        n = len(view.rows)
        self.steps.append({
            "sample": view.rows.cpu(), "block": torch.full((n,), view.block), "step": torch.full((n,), view.step),
            "block_start": torch.full((n,), view.block_start),
            "features": block_features(view, self.features, self.steps_per_block).float().cpu(),
            "predicted": view.predicted.cpu(), "masked": view.masked.cpu(), "committed": commit.cpu(),
        })

    def to_columns(self, references: torch.Tensor, sample_offset: int) -> dict[str, np.ndarray]:
        if not self.steps:
            raise ValueError("no decoding steps were recorded")
        cat = {k: torch.cat([step[k] for step in self.steps]) for k in self.steps[0]}
        width = cat["predicted"].shape[1]
        columns = cat["block_start"][:, None] + torch.arange(width)[None, :]
        expected = references.to(cat["predicted"].device)[cat["sample"][:, None], columns]
        return {
            "sample": (cat["sample"] + sample_offset).numpy(),
            "block": cat["block"].numpy(),
            "step": cat["step"].numpy(),
            "features": cat["features"].numpy(),
            "label": (cat["predicted"] == expected).to(torch.int8).numpy(),
            "masked": cat["masked"].to(torch.int8).numpy(),
            "committed": cat["committed"].to(torch.int8).numpy(),
        }


def shard_range(index: int, count: int, total: int) -> tuple[int, int]:
    return index * total // count, (index + 1) * total // count


def prompt_source(ctx: StageContext) -> Task:
    """The experiment's task, or the trajectories' own (``task@trajectories.task=NAME``: another benchmark's train
    split, or a jsonl mix as the paper's FLAN mix). Labels compare with the model's own output, so the prompts'
    reference answers are never read."""
    own = ctx.cfg.trajectories.task
    return ctx.task if own is None else build_task(own, "trajectories.task")


def rollout_policy(ctx: StageContext, filter_artifact: Artifact) -> Policy:
    """The filter of the previous round, at its validated threshold (else train_filter.threshold)."""
    from models.filter import BlockFilter

    network = BlockFilter.load(filter_artifact.path / "filter", ctx.device)
    threshold = network.config.threshold or ctx.cfg.train_filter.threshold
    return LearnedFilter(network, network.config.features, threshold, settings(ctx.cfg).steps_per_block)


def compute_shard(ctx: StageContext, index: int, target: Path, round_: Round = Round()) -> None:
    from datasets import Dataset

    t, loaded = ctx.cfg.trajectories, ctx.loaded
    began = time.perf_counter()
    decode_settings = settings(ctx.cfg)
    first, last = shard_range(index, t.num_shards, t.num_prompts)
    source = prompt_source(ctx)
    examples = source.examples(t.split, t.num_prompts)[first:last]
    prompts = [encode_prompt(loaded.tokenizer, ex, source.chat_template) for ex in examples]
    recorder = TrajectoryRecorder(tuple(t.features), decode_settings.steps_per_block)
    progress = bool(ctx.cfg.progress)
    history = bool(set(t.features) & set(HISTORY_FEATURES))
    name = shard_name(index, t.num_shards)
    if round_.index:
        references = torch.load(round_.base.path / "shards" / name / "references.pt")
        runs = [run_decode(loaded, prompts, rollout_policy(ctx, round_.filter), decode_settings, observer=recorder,
                   progress=progress, description=f"trajectories {name} (on-policy round {round_.index})",
                   track_history=history)]
    elif t.policy == "vanilla":
        runs = [run_decode(loaded, prompts, Vanilla(), decode_settings, observer=recorder, progress=progress,
                           description=f"trajectories {name}", track_history=history)]
        references = runs[0].tokens
    else:
        runs = [reference_outputs(loaded, prompts, decode_settings, progress)]
        references = runs[0].tokens
        runs.append(run_decode(loaded, prompts, ExtremelyGreedy(), decode_settings, references, observer=recorder,
                               progress=progress, description=f"trajectories {name} (egp)", track_history=history))
    columns = recorder.to_columns(references, first)

    def build(tmp: Path) -> None:
        Dataset.from_dict(columns).save_to_disk(str(tmp))
        torch.save(references, tmp / "references.pt")
        forward = sum(run.forward_seconds for run in runs)
        write_json_atomic(tmp / "timing.json", {"prompts": len(prompts), "forward_seconds": forward,
                                                "seconds": time.perf_counter() - began})

    atomic_dir(target, build)


def produce(ctx: StageContext, round_: Round = Round(), reuse_only: bool = False) -> Artifact | None:
    """The complete trajectories artifact; None when only one shard was asked for and others are missing
    (``reuse_only``: refuse to compute it).

    Each shard is computed under its own lock, so array tasks (and concurrent runs) never write the same shard;
    the artifact is finalised, under the artifact's lock, by whichever run sees the last shard land. An
    on-policy round is recomputed when the filter it decoded with has changed.
    """
    s, t = spec(ctx, round_.index, round_.filter.key if round_.filter else None), ctx.cfg.trajectories
    inputs = {"filter": round_.filter} if round_.index else {}
    existing = ctx.store.check_upstream(s, reuse_only)
    if existing is not None and not ctx.forced("trajectories") and ctx.store.is_current(existing, inputs):
        log.info("trajectories %s: complete, reusing %s (nothing to compute)", s.key, existing.path)
        return existing
    work = ctx.store.begin(s) if inputs else ctx.store.work_dir(s)
    if inputs:
        ctx.store.check_partial(s, work, inputs)  # shards decoded with an older filter are cleared

    wanted = range(t.num_shards) if t.shard is None or round_.index else [t.shard]
    for index in wanted:
        name = shard_name(index, t.num_shards)
        target = work / "shards" / name
        with ctx.store.lock(s, name):
            if (finished := ctx.store.finished_elsewhere(s, existing)) is not None and \
                    ctx.store.is_current(finished, inputs):
                return finished
            if target.exists() and not ctx.forced("trajectories"):
                log.info("trajectories %s: %s already written, skipping", s.key, name)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            compute_shard(ctx, index, target, round_)
            log.info("trajectories %s: %s written", s.key, name)
    with ctx.store.lock(s):
        if (finished := ctx.store.finished_elsewhere(s, existing)) is not None and \
                ctx.store.is_current(finished, inputs):
            return finished
        done = [i for i in range(t.num_shards) if (work / "shards" / shard_name(i, t.num_shards)).exists()]
        if len(done) < t.num_shards:
            log.info("trajectories %s: %d of %d shards written; run the others to finish", s.key, len(done),
                     t.num_shards)
            return None
        return ctx.store.finalize(s, shard_statistics(work / "shards", list(t.features)), inputs=inputs)


def shard_statistics(shards: Path, names: list[str]) -> dict:
    data = load_shards(shards).with_format("numpy")
    labels = np.asarray(data["label"], dtype=np.int8)
    masked = np.asarray(data["masked"], dtype=np.int8).astype(bool)
    check_finite(np.asarray(data["features"], dtype=np.float32), names, shards)
    timings = [json.loads(p.read_text()) for p in sorted(shards.glob("*/timing.json"))]
    prompts, seconds = sum(x["prompts"] for x in timings), sum(x["seconds"] for x in timings)
    forward = sum(x["forward_seconds"] for x in timings)
    return {
        "seconds": seconds, "forward_seconds": forward, "seconds_over_forward": seconds / max(forward, 1e-9),
        "minutes_per_1000_prompts": seconds / 60 * 1000 / max(prompts, 1),
        "rows": int(labels.shape[0]), "positions": int(labels.size),
        "samples": len(np.unique(np.asarray(data["sample"]))),
        "positive_rate": float(labels.mean()) if labels.size else 0.0,
        "positive_rate_masked": float(labels[masked].mean()) if masked.any() else 0.0,
        "negatives_masked": int((labels[masked] == 0).sum()),
        "shards": len(list(shards.iterdir())),
    }


def run(ctx: StageContext, items: list[int] | None = None) -> Artifact | None:
    """The oracle's trajectories: every shard, or the one ``trajectories.shard`` names (a cluster array task)."""
    from pipeline.runtime.tracking import tracking

    artifact = produce(ctx, reuse_only=ctx.reuse_only("trajectories"))
    if artifact is not None:
        with tracking(ctx.cfg, "trajectories", artifact.key) as tracker:
            tracker.summary(artifact.figures)
        log.info("trajectories: %s", artifact.figures)
    return artifact


