"""Stage ``train_policy``: reinforcement fine-tuning of the trained filter as an unmasking policy.

Downstream of ``train_filter`` (its filter is the warm start and the KL anchor). Writes the fine-tuned policy as a
saved filter (``policy/``, loadable by ``decode=rl_filter decode.filter_path=...``) with the threshold that did
best on held-out training prompts, what was learned (``metrics.json``), what it cost (``timing.json``, beside the
record: wall-clock seconds differ between identical runs) and the per-update figures (``logs/``, and W&B). A killed
run resumes from ``checkpoints/last.ckpt`` in the artifact's work directory with its history and its seconds. See
:mod:`pipeline.learning.policy` for the method.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig

from pipeline.artifacts.store import TIMING, Artifact, ArtifactSpec, code_digest, write_json_atomic
from pipeline.configuration.command import decode_settings
from pipeline.decoding.settings import DecodeSettings
from pipeline.runtime import preemption
from pipeline.runtime.progress import (
    FiniteTraining,
    StepRow,
    TrainingClock,
    bar_wanted,
    history_logger,
    last_logged,
    step_row,
)
from pipeline.runtime.tracking import tracking
from pipeline.stages import train_filter
from pipeline.stages.context import (
    DECODING_CODE,
    StageContext,
    cleared_if_diverged,
    model_identity,
    plain,
    quiet_lightning,
)
from pipeline.stages.train_filter import resumable

log = logging.getLogger(__name__)
CODE = (*DECODING_CODE, "models/filter.py", "pipeline/learning/policy.py", "pipeline/stages/train_policy.py")
SPEED_ONLY = ("val_every_n_updates", "checkpoint_every_n_updates")  # when to look and save, not what is learned


def rollout_settings(cfg: DictConfig) -> DecodeSettings:
    """The decode the policy is trained under: the window, block and steps its filter's trajectories were
    recorded at (so experiments decoding longer windows share one policy), EoTP as ``train_policy.eotp`` says,
    in batches of one update's rollouts."""
    t, tp = cfg.trajectories, cfg.train_policy
    return decode_settings(cfg).replace(policy="rl_filter", gen_length=t.gen_length, block_length=t.block_length,
                                        steps=t.steps, eotp=bool(tp.eotp), threshold=None, filter_path=None,
                                        batch_size=tp.prompts_per_update * tp.group_size)


def spec(ctx: StageContext) -> ArtifactSpec:
    settings = {"train": {k: v for k, v in plain(ctx.cfg.train_policy).items() if k not in SPEED_ONLY},
                "decode": rollout_settings(ctx.cfg).identity(), "model": model_identity(ctx.cfg.model),
                "task": plain(ctx.cfg.task), "device": ctx.device.type}
    return ArtifactSpec("train_policy", code_digest(CODE), settings, {"filter": train_filter.spec(ctx).key},
                        ctx.labels())


def run(ctx: StageContext, items: list[int] | None = None) -> Artifact:
    """The fine-tuned policy, retrained when forced or when the supervised filter it starts from changed."""
    s = spec(ctx)
    existing = ctx.store.check_upstream(s, ctx.reuse_only("train_policy"))
    warm = ctx.upstream(train_filter.spec(ctx))
    if existing is not None and not ctx.forced("train_policy") and ctx.store.is_current(existing, {"filter": warm}):
        log.info("train_policy %s: complete, reusing %s (nothing to compute)", s.key, existing.path)
        return existing
    with tracking(ctx.cfg, "train_policy", s.key) as tracker, quiet_lightning():
        artifact = ctx.store.materialize(s, lambda work: fit(ctx, warm, work, tracker), force=True,
                                         inputs={"filter": warm})
        tracker.summary(artifact.figures)
    return artifact


def fit(ctx: StageContext, warm: Artifact, work: Path, tracker) -> dict:
    from models.filter import BlockFilter
    from pipeline.learning.policy import Environment, PolicyGradientModule, PromptSchedule, loaders

    cfg, tp = ctx.cfg, ctx.cfg.train_policy
    L.seed_everything(tp.seed, workers=True)
    network = warm_start(BlockFilter.load(warm.path / "filter"), tp.center, cfg.train_filter.threshold).train()
    examples = ctx.task.examples(tp.split, tp.num_prompts + tp.val_prompts)
    env = Environment(ctx.loaded, ctx.task, examples[: tp.num_prompts], examples[tp.num_prompts :],
                      rollout_settings(cfg), tp.group_size, tp.speed_weight,
                      PromptSchedule(tp.num_prompts, tp.prompts_per_update, tp.seed))
    module = PolicyGradientModule(network, lr=tp.lr, kl_weight=tp.kl_weight,
                                  normalize_advantage=tp.normalize_advantage, val_threshold=0.5,
                                  seed=tp.seed)
    module.environment = env
    train, val = loaders(tp.updates)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=work / "checkpoints", filename="last", save_top_k=1, every_n_train_steps=tp.checkpoint_every_n_updates,
        enable_version_counter=False,
    )
    clock = TrainingClock()
    lower = {"train_policy.lr": tp.lr, "train_policy.speed_weight": tp.speed_weight}
    callbacks: list[L.Callback] = [FiniteTraining("train_policy", "update", lower), clock, StepRow(), checkpoints]
    plugins = []
    snapshot = preemption.UpdateSnapshot(work / "checkpoints" / "last.ckpt")
    if preemption.in_slurm_job():  # the job wrapper owns the preemption signal (see train_filter)
        plugins.append(SLURMEnvironment(auto_requeue=False))
        callbacks.append(snapshot)
    bar = bar_wanted(bool(cfg.progress))
    if not bar:
        callbacks.append(UpdateLog(tp.updates))
    last, first_update = resumable(work / "checkpoints" / "last.ckpt", "train_policy", "update")
    loggers = [history_logger(work, first_update, step_row(last))]
    if tracker.run is not None:
        loggers.append(L.pytorch.loggers.WandbLogger(experiment=tracker.run))
    trainer = L.Trainer(
        max_epochs=-1, max_steps=tp.updates,  # a resumed run may restart the loader: updates count, not epochs
        accelerator="gpu" if ctx.device.type == "cuda" else "cpu", devices=1,
        callbacks=callbacks, logger=loggers, enable_progress_bar=bar,
        val_check_interval=min(tp.val_every_n_updates, tp.updates),
        num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=work, enable_model_summary=False,
        plugins=plugins, limit_val_batches=1,
    )
    with preemption.saver(snapshot.save), cleared_if_diverged(work):
        preemption.fit(trainer, module, train_dataloaders=train, val_dataloaders=val,
                       ckpt_path=str(last) if last else None)
    policy = module.network.cpu().eval()
    chosen = choose_threshold(env, policy, list(tp.thresholds))
    start = choose_threshold(env, warm_start(BlockFilter.load(warm.path / "filter"), tp.center,
                                             cfg.train_filter.threshold), list(tp.thresholds))
    policy.config = dataclasses.replace(policy.config, threshold=chosen["threshold"])
    rollouts = trainer.global_step * tp.prompts_per_update * tp.group_size
    # what was learned, the same for a resumed run as for an uninterrupted one: the record's content
    metrics = {**{f"validated/{k}": v for k, v in chosen.items()},
               **{f"warm_start/{k}": v for k, v in start.items()},
               "updates": trainer.global_step, "rollouts": rollouts, **last_logged(work, "train/")}
    # what it cost, over every run that trained towards the policy: kept beside the record, not in it
    timing = {"seconds": clock.seconds, "minutes_per_1000_rollouts": clock.seconds / 60 / max(rollouts, 1) * 1000}
    policy.save(work / "policy")
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_json_atomic(work / TIMING, timing)
    figures = {**metrics, **timing}
    log.info("train_policy: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()})
    return figures


def warm_start(network, center: bool, fallback: float):
    """The supervised filter as the policy starts from it: with ``center``, its logits shifted so probability 0.5
    sits at its validated threshold (``train_filter.threshold`` where it stores none)."""
    from pipeline.learning.policy import center_on

    if not center:
        return network
    return center_on(network, network.config.threshold if network.config.threshold is not None else fallback)


def choose_threshold(env, network, thresholds: list[float]) -> dict[str, float]:
    """The deterministic policy's threshold with the highest mean reward on the held-out prompts (ties: the
    higher accuracy, then the first listed), with its accuracy and NFE there."""
    results = [{"threshold": t, **env.evaluate(network, t)} for t in thresholds]
    for r in results:
        log.info("train_policy: held-out prompts at threshold %.3g: accuracy %.3f, NFE %.2f, reward %.4f",
                 r["threshold"], r["accuracy"], r["nfe"], r["reward"])
    return max(results, key=lambda r: (r["reward"], r["accuracy"], -results.index(r)))


class UpdateLog(L.Callback):
    """Without a progress bar: one log line per tenth of the updates, with the rollouts' reward, accuracy, NFE."""

    def __init__(self, updates: int) -> None:
        self.updates, self.every = updates, max(updates // 10, 1)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every and step != self.updates:
            return
        m = trainer.callback_metrics
        log.info("train_policy: update %d/%d: reward %.4f, accuracy %.3f, NFE %.2f", step, self.updates,
                 float(m.get("train/reward", float("nan"))), float(m.get("train/accuracy", float("nan"))),
                 float(m.get("train/nfe", float("nan"))))
