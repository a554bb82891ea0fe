"""Stage ``train_policy``: reinforcement fine-tuning of the trained filter as an unmasking policy.

Downstream of ``train_filter`` (its filter is the warm start and the KL anchor). Writes the fine-tuned policy as a
saved, speed-conditioned filter (``policy/``, loadable by ``decode=rl_filter decode.filter_path=...``) with its knob
validated on held-out prompts (``policy/knob.json``: accuracy and NFE at each ``train_policy.knob`` speed, and the
default speed, also stored in ``filter.json``), what was learned (``metrics.json``), what it cost (``timing.json``,
beside the record: wall-clock seconds differ between identical runs) and the per-update figures (``logs/``, and
W&B). A killed run resumes from ``checkpoints/last.ckpt`` in the artifact's work directory with its history and its
seconds. See :mod:`pipeline.learning.policy` for the method.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from models.errors import UserError
from pipeline.artifacts.store import TIMING, Artifact, ArtifactSpec, code_digest, write_json_atomic
from pipeline.configuration.command import decode_settings
from pipeline.decoding.settings import DecodeSettings
from pipeline.runtime import preemption
from pipeline.runtime.progress import bar_wanted, last_logged, step_row
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
THRESHOLD = 0.5  # the deterministic policy's: the knob is the speed, the threshold stays where training drew
ACCURACY_TOLERANCE = 0.005  # the default speed: the fastest whose held-out accuracy is this close to the best


class NonMonotoneKnob(UserError):
    """The validated knob where a faster speed took more forward passes: its default would not mean what it says."""


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
    # Lightning is imported here, not above: a command that trains nothing never pays its import
    import lightning as L
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from models.filter import BlockFilter
    from pipeline.learning.policy import (
        Environment,
        PolicyGradientModule,
        PromptSchedule,
        SpeedSchedule,
        UpdateLog,
        loaders,
    )
    from pipeline.runtime.training import (
        FiniteTraining,
        StepRow,
        TrainingClock,
        UpdateSnapshot,
        history_logger,
        interruptible_fit,
    )

    cfg, tp = ctx.cfg, ctx.cfg.train_policy
    low, high = (float(w) for w in tp.speed_weights)
    L.seed_everything(tp.seed, workers=True)
    network = warm_start(BlockFilter.load(warm.path / "filter"), tp.center, cfg.train_filter.threshold).train()
    examples = ctx.task.examples(tp.split, tp.num_prompts + tp.val_prompts)
    env = Environment(ctx.loaded, ctx.task, examples[: tp.num_prompts], examples[tp.num_prompts :],
                      rollout_settings(cfg), tp.group_size,
                      PromptSchedule(tp.num_prompts, tp.prompts_per_update, tp.seed),
                      SpeedSchedule(low, high, tp.prompts_per_update, tp.seed, tp.speed_draw), tp.reward)
    module = PolicyGradientModule(network, lr=tp.lr, kl_weight=tp.kl_weight,
                                  normalize_advantage=tp.normalize_advantage, val_threshold=THRESHOLD,
                                  val_speed=(low + high) / 2, seed=tp.seed)
    module.environment = env
    train, val = loaders(tp.updates)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=work / "checkpoints", filename="last", save_top_k=1, every_n_train_steps=tp.checkpoint_every_n_updates,
        enable_version_counter=False,
    )
    clock = TrainingClock()
    lower = {"train_policy.lr": tp.lr, "train_policy.speed_weights": [low, high]}
    callbacks: list[L.Callback] = [FiniteTraining("train_policy", "update", lower), clock, StepRow(), checkpoints]
    plugins = []
    snapshot = UpdateSnapshot(work / "checkpoints" / "last.ckpt")
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
        interruptible_fit(trainer, module, train_dataloaders=train, val_dataloaders=val,
                       ckpt_path=str(last) if last else None)
    policy = module.network.cpu().eval()
    curve = knob_curve(env, policy, [float(k) for k in tp.knob])
    check_monotone(curve)  # raised before anything is saved: the checkpoint stays in the work folder
    chosen = default_point(curve)
    start = env.evaluate(module.reference, THRESHOLD, chosen["speed"])  # the frozen warm start, as trained against
    policy.config = dataclasses.replace(policy.config, threshold=THRESHOLD, speed=chosen["speed"])
    rollouts = trainer.global_step * tp.prompts_per_update * tp.group_size
    # what was learned, the same for a resumed run as for an uninterrupted one: the record's content
    metrics = {**{f"validated/{k}": v for k, v in chosen.items()}, "validated/threshold": THRESHOLD,
               "validated/curve": curve, **{f"warm_start/{k}": v for k, v in start.items()},
               "warm_start/speed": chosen["speed"],
               "updates": trainer.global_step, "rollouts": rollouts, **last_logged(work, "train/")}
    # what it cost, over every run that trained towards the policy: kept beside the record, not in it
    timing = {"seconds": clock.seconds, "minutes_per_1000_rollouts": clock.seconds / 60 / max(rollouts, 1) * 1000}
    policy.save(work / "policy")
    write_json_atomic(work / "policy" / "knob.json", {"default": chosen["speed"], "threshold": THRESHOLD,
                                                      "speed_weights": [low, high], "curve": curve})
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_json_atomic(work / TIMING, timing)
    figures = {**metrics, **timing}
    log.info("train_policy: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()
                                  if k != "validated/curve"})
    return figures


def warm_start(network, center: bool, fallback: float):
    """The supervised filter as the policy starts from it, given a speed input that at first shifts every logit by
    the speed (a threshold knob): with ``center``, its logits shifted so probability 0.5 sits at its validated
    threshold (``train_filter.threshold`` where it stores none) at speed 0."""
    from models.filter import speed_conditioned
    from pipeline.learning.policy import center_on

    if center:
        center_on(network, network.config.threshold if network.config.threshold is not None else fallback)
    return speed_conditioned(network)


def knob_curve(env, network, speeds: list[float]) -> list[dict[str, float]]:
    """The deterministic policy on the held-out prompts at each knob speed, slowest first: speed, accuracy, mean
    NFE and mean reward (at that speed's weight)."""
    curve = [{"speed": speed, **env.evaluate(network, THRESHOLD, speed)} for speed in sorted(set(speeds))]
    for point in curve:
        log.info("train_policy: held-out prompts at speed %g: accuracy %.3f, NFE %.2f, reward %.4f",
                 point["speed"], point["accuracy"], point["nfe"], point["reward"])
    return curve


def check_monotone(curve: list[dict[str, float]]) -> None:
    """Mean NFE never rises as the speed does; else a one-line error naming the speeds and their NFEs."""
    rises = [(a, b) for a, b in zip(curve, curve[1:]) if b["nfe"] > a["nfe"]]
    if rises:
        a, b = rises[0]
        points = ", ".join(f"{p['speed']:g}: {p['nfe']:.2f}" for p in curve)
        raise NonMonotoneKnob(f"train_policy: the knob is not monotone on the held-out prompts: speed {b['speed']:g} "
                              f"took {b['nfe']:.2f} forward passes on average, more than {a['nfe']:.2f} at speed "
                              f"{a['speed']:g} (NFE by speed: {points}); train longer (train_policy.updates), "
                              "validate on more prompts (train_policy.val_prompts) or space train_policy.knob wider")


def default_point(curve: list[dict[str, float]]) -> dict[str, float]:
    """The knob's default: the fastest point (fewest passes; then the more accurate, then the slower) whose
    held-out accuracy is within ``ACCURACY_TOLERANCE`` of the curve's best."""
    best = max(p["accuracy"] for p in curve)
    near = [p for p in curve if p["accuracy"] >= best - ACCURACY_TOLERANCE]
    return min(near, key=lambda p: (p["nfe"], -p["accuracy"], p["speed"]))
