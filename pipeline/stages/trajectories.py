"""Stage ``trajectories``: decode training prompts and record, at every step, the current block's features and
labels (1 where the current prediction already equals the final output) as ``datasets`` Arrow shards.

The reference output is the model's own vanilla decode. Under ``trajectories.policy=egp`` (the paper's recipe)
prompts are decoded again under the oracle while recording; under ``vanilla`` the reference decode itself is
recorded. Shards (``trajectories.shard=i``) are written atomically inside the artifact's work directory, so
array jobs can split the work and a killed run resumes shard by shard; the artifact is finalised once every
shard exists.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline.artifacts import Artifact, ArtifactSpec, atomic_dir, code_digest
from pipeline.data import encode_prompt
from pipeline.decoding.features import HISTORY_FEATURES, block_features
from pipeline.decoding.policies import ExtremelyGreedy, StepView, Vanilla
from pipeline.decoding.settings import DecodeSettings
from pipeline.evaluation import reference_outputs, run_decode
from pipeline.stages.common import DECODING_CODE, StageContext, model_identity, plain
from pipeline.tasks.base import Task
from pipeline.tasks.registry import build_task
from pipeline.trajectory_data import check_finite, load_shards, shard_name

log = logging.getLogger(__name__)
CODE = (*DECODING_CODE, "pipeline/stages/trajectories.py", "pipeline/trajectory_data.py")


def settings(cfg: DictConfig) -> DecodeSettings:
    t = cfg.trajectories
    return DecodeSettings(gen_length=t.gen_length, block_length=t.block_length, steps=t.steps,
                          batch_size=t.batch_size)


def spec(ctx: StageContext) -> ArtifactSpec:
    t = ctx.cfg.trajectories
    settings_ = {
        "model": model_identity(ctx.cfg.model), "task": plain(ctx.cfg.task), "prompts": plain(t.task),
        "policy": t.policy, "split": t.split,
        "num_prompts": t.num_prompts, "gen_length": t.gen_length, "block_length": t.block_length,
        "steps": t.steps, "features": list(t.features), "num_shards": t.num_shards,
    }
    return ArtifactSpec("trajectories", code_digest(CODE), settings_, labels=ctx.labels())


class TrajectoryRecorder:
    """Observer that keeps, per (sample, block, step), the block's features, predictions and mask state."""

    def __init__(self, features: tuple[str, ...], steps_per_block: int) -> None:
        self.features, self.steps_per_block = features, steps_per_block
        self.records: dict[str, list] = {k: [] for k in ("sample", "block", "step", "block_start", "features",
                                                          "predicted", "masked", "committed")}

    def __call__(self, view: StepView, commit: torch.Tensor) -> None:
        feats = block_features(view, self.features, self.steps_per_block).cpu().numpy().astype(np.float32)
        for i, row in enumerate(view.rows.tolist()):
            self.records["sample"].append(row)
            self.records["block"].append(view.block)
            self.records["step"].append(view.step)
            self.records["block_start"].append(view.block_start)
            self.records["features"].append(feats[i])
            self.records["predicted"].append(view.predicted[i].cpu().numpy().astype(np.int64))
            self.records["masked"].append(view.masked[i].cpu().numpy())
            self.records["committed"].append(commit[i].cpu().numpy())

    def to_columns(self, references: torch.Tensor, sample_offset: int) -> dict[str, list]:
        refs = references.numpy()
        width = len(self.records["predicted"][0]) if self.records["predicted"] else 0
        labels = [
            (pred == refs[s, start : start + width]).astype(np.int8)
            for s, start, pred in zip(self.records["sample"], self.records["block_start"], self.records["predicted"])
        ]
        return {
            "sample": [s + sample_offset for s in self.records["sample"]],
            "block": self.records["block"],
            "step": self.records["step"],
            "features": [f.tolist() for f in self.records["features"]],
            "label": [x.tolist() for x in labels],
            "masked": [m.astype(np.int8).tolist() for m in self.records["masked"]],
            "committed": [c.astype(np.int8).tolist() for c in self.records["committed"]],
        }


def shard_range(index: int, count: int, total: int) -> tuple[int, int]:
    return index * total // count, (index + 1) * total // count


def prompt_source(ctx: StageContext) -> Task:
    """The experiment's task, or the trajectories' own (``task@trajectories.task=NAME``: another benchmark's train
    split, or a jsonl mix as the paper's FLAN mix). Labels compare with the model's own output, so the prompts'
    reference answers are never read."""
    own = ctx.cfg.trajectories.task
    return ctx.task if own is None else build_task(own, "trajectories.task")


def compute_shard(ctx: StageContext, index: int, target: Path) -> None:
    from datasets import Dataset

    t, loaded = ctx.cfg.trajectories, ctx.loaded
    decode_settings = settings(ctx.cfg)
    first, last = shard_range(index, t.num_shards, t.num_prompts)
    source = prompt_source(ctx)
    examples = source.examples(t.split, t.num_prompts)[first:last]
    prompts = [encode_prompt(loaded.tokenizer, ex.prompt, source.chat_template) for ex in examples]
    recorder = TrajectoryRecorder(tuple(t.features), decode_settings.steps_per_block)
    progress = bool(ctx.cfg.progress)
    history = bool(set(t.features) & set(HISTORY_FEATURES))
    if t.policy == "vanilla":
        references = run_decode(loaded, prompts, Vanilla(), decode_settings, observer=recorder, progress=progress,
                                description=f"trajectories {shard_name(index, t.num_shards)}",
                                track_history=history).tokens
    else:
        references = reference_outputs(loaded, prompts, decode_settings, progress).tokens
        run_decode(loaded, prompts, ExtremelyGreedy(), decode_settings, references, observer=recorder,
                   progress=progress, description=f"trajectories {shard_name(index, t.num_shards)} (egp)",
                   track_history=history)

    def build(tmp: Path) -> None:
        Dataset.from_dict(recorder.to_columns(references, first)).save_to_disk(str(tmp))
        torch.save(references, tmp / "references.pt")

    atomic_dir(target, build)


def ensure(ctx: StageContext, upstream: bool = False) -> Artifact | None:
    """The complete trajectories artifact; None when only one shard was asked for and others are missing.

    Each shard is computed under its own lock, so array tasks (and concurrent runs) never write the same shard;
    the artifact is finalised, under the artifact's lock, by whichever run sees the last shard land.
    """
    s, t = spec(ctx), ctx.cfg.trajectories
    existing = ctx.store.check_upstream(s, upstream and bool(ctx.cfg.reuse_only))
    if existing is not None and not ctx.forced("trajectories"):
        log.info("trajectories %s: complete, reusing %s (nothing to compute)", s.key, existing.path)
        return existing
    work = ctx.store.work_dir(s)

    wanted = range(t.num_shards) if t.shard is None else [t.shard]
    for index in wanted:
        name = shard_name(index, t.num_shards)
        target = work / "shards" / name
        with ctx.store.lock(s, name):
            if (finished := ctx.store.finished_elsewhere(s, existing)) is not None:
                return finished
            if target.exists() and not ctx.forced("trajectories"):
                log.info("trajectories %s: %s already written, skipping", s.key, name)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            compute_shard(ctx, index, target)
    with ctx.store.lock(s):
        if (finished := ctx.store.finished_elsewhere(s, existing)) is not None:
            return finished
        done = [i for i in range(t.num_shards) if (work / "shards" / shard_name(i, t.num_shards)).exists()]
        if len(done) < t.num_shards:
            log.info("trajectories %s: %d of %d shards written; run the others to finish", s.key, len(done),
                     t.num_shards)
            return None
        return ctx.store.finalize(s, shard_statistics(work / "shards", list(t.features)))


def shard_statistics(shards: Path, names: list[str]) -> dict:
    data = load_shards(shards)
    labels = np.asarray(data["label"], dtype=np.int8)
    masked = np.asarray(data["masked"], dtype=np.int8).astype(bool)
    check_finite(np.asarray(data["features"], dtype=np.float32), names, shards)
    return {
        "rows": int(labels.shape[0]), "positions": int(labels.size), "samples": len(set(data["sample"])),
        "positive_rate": float(labels.mean()) if labels.size else 0.0,
        "positive_rate_masked": float(labels[masked].mean()) if masked.any() else 0.0,
        "shards": len(list(shards.iterdir())),
    }


def run(cfg: DictConfig, ctx: StageContext | None = None) -> Artifact | None:
    ctx = ctx or StageContext(cfg)
    from pipeline.tracking import tracking

    artifact = ensure(ctx)
    if artifact is not None:
        with tracking(cfg, "trajectories", artifact.key) as tracker:
            tracker.summary(artifact.figures)
        log.info("trajectories: %s", artifact.figures)
    return artifact


