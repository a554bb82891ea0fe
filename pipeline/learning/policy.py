"""Reinforcement fine-tuning of a filter as an unmasking policy (GRPO-style), in Lightning.

Decoding is the environment: the dLLM is frozen, and a rollout is one decode of a prompt through the one loop,
where at every step each masked position of the block is committed with the probability the policy gives it (a
Bernoulli draw), united with the vanilla schedule's top-k so every step commits something, as the learned filter
does at test time. As in Jazbec et al. (arXiv 2512.09106, "learning unmasking policies with reinforcement"):
``group_size`` rollouts of each prompt, each rollout's advantage its reward minus its group's mean, and a reward
that is zero for a wrong answer and grows as forward passes fall for a right one, so speed never pays for a wrong
answer. A KL term to the warm start (the supervised filter) keeps the policy near what it was taught.

One policy serves every speed preference: each update draws a speed weight per prompt group from
``train_policy.speed_weights``, and the group's rollouts are rewarded with it and given it as the network's speed
input (models/filter.py), so decoding later picks its operating point by the speed alone.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from models.filter import BlockFilter
from pipeline.decoding.features import block_features
from pipeline.decoding.loop import DecodeOutput, generate_batch
from pipeline.decoding.policies import LearnedFilter, ReinforcedFilter
from pipeline.decoding.settings import DecodeSettings
from pipeline.decoding.step import StepView
from pipeline.evaluation.setting import run_decode, summarize
from pipeline.modeling.loading import LoadedModel
from pipeline.tasks.base import Example, Task
from pipeline.tasks.prompts import encode_prompt

log = logging.getLogger(__name__)

@dataclass
class Decisions:
    """One step of a batch of rollouts: what the policy saw and what it drew at each block position."""

    rows: torch.Tensor  # [n] rollouts taking part in the step
    features: torch.Tensor  # [n, B, F]
    masked: torch.Tensor  # [n, B] positions whose decision counts (still masked before the step)
    actions: torch.Tensor  # [n, B] the Bernoulli draws (commit or not)
    speeds: torch.Tensor | None = None  # [n] each row's speed input (None: a network without one)


class SampledFilter(LearnedFilter):
    """The rollout policy: each masked position committed with probability ``sigmoid(filter logit)``, plus the
    schedule's top-k; records every step's :class:`Decisions` for the policy gradient. ``speeds``: each decoded
    row's speed input (``[batch]``), for a speed-conditioned network."""

    name = "rl_rollout"

    def __init__(self, network: BlockFilter, steps_per_block: int, generator: torch.Generator,
                 speeds: torch.Tensor | None = None) -> None:
        super().__init__(network, network.config.features, 0.5, steps_per_block)
        self.generator = generator
        self.row_speeds = speeds
        self.decisions: list[Decisions] = []

    def speeds(self, view: StepView) -> torch.Tensor | None:
        return None if self.row_speeds is None else self.row_speeds[view.rows.cpu()]

    @torch.no_grad()
    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        features = block_features(view, self.features, self.steps_per_block).to(self.param.device)
        probability = torch.sigmoid(self.logits(view, features))
        draw = torch.rand(probability.shape, generator=self.generator, device=probability.device) < probability
        actions = draw.to(view.masked.device) & view.masked
        self.decisions.append(Decisions(view.rows.cpu(), features.cpu(), view.masked.cpu(), actions.cpu(),
                                        self.speeds(view)))
        self.accepted = actions
        return actions | view.top_k(view.scores, view.masked, view.k), view.predicted


def center_on(network: BlockFilter, threshold: float) -> BlockFilter:
    """The same filter with its logits shifted so that probability 0.5 falls where ``threshold`` was: as a
    Bernoulli policy it then commits surely what the filter accepted surely and hesitates at its threshold (the
    supervised filter's probabilities sit near 1 almost everywhere, so drawn as they are it would commit nearly
    every position at the first step)."""
    shift = math.log(threshold / (1 - threshold)) if threshold < 1 else 0.0
    last = network.head if network.config.any_block_length else network.net[-1]
    with torch.no_grad():
        last.bias -= shift
    return network


def rewards(correct: torch.Tensor, nfe: torch.Tensor, gen_length: int, speed_weight: float | torch.Tensor,
            form: str = "bonus") -> torch.Tensor:
    """``bonus``: 0 for a wrong answer, ``1 + w * (1 - NFE / gen_length)`` for a right one (1 at vanilla's one
    pass per token, up to ``1 + w`` as passes fall to none), so speed never pays for a wrong answer; its speed
    incentive is bounded (going from 10 to 6 passes of 64 is worth at most 7.4% more reward, whatever ``w``).
    ``cost``: ``correct - w * NFE / gen_length``, every pass costing ``w / gen_length`` right or wrong, so a larger
    ``w`` buys speed without bound. ``w`` (``speed_weight``) is one number or one per rollout."""
    if form == "cost":
        return correct.float() - speed_weight * nfe.float() / gen_length
    return correct.float() * (1 + speed_weight * (1 - nfe.float() / gen_length))


def group_advantages(reward: torch.Tensor, group_size: int, normalize: bool) -> torch.Tensor:
    """Each rollout's reward minus its group's mean (rollouts of one prompt are consecutive); divided by the
    group's standard deviation with ``normalize`` (GRPO's original form; Dr. GRPO drops it)."""
    grouped = reward.view(-1, group_size)
    advantage = grouped - grouped.mean(-1, keepdim=True)
    if normalize:
        advantage = advantage / (grouped.std(-1, keepdim=True, unbiased=False) + 1e-6)
    return advantage.reshape(-1)


def bernoulli_kl(logit: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(sigmoid(logit)) || Bernoulli(sigmoid(reference))), per position."""
    p = torch.sigmoid(logit)
    return (p * (F.logsigmoid(logit) - F.logsigmoid(reference))
            + (1 - p) * (F.logsigmoid(-logit) - F.logsigmoid(-reference)))


def policy_loss(network: BlockFilter, reference: BlockFilter, decisions: Sequence[Decisions],
                advantage: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``-mean(A * log pi(a)) + kl_weight * mean(KL to the warm start)`` over every masked decision of the batch
    (one constant normaliser, the decision count, so long rollouts are not down-weighted per decision)."""
    device = next(network.parameters()).device
    gradient, kl, count = torch.zeros((), device=device), torch.zeros((), device=device), 0
    for step in decisions:
        # normal tensors: the recorded ones were made in inference mode, which autograd cannot save
        features, masked, actions, rows = (t.clone().to(device) for t in (step.features, step.masked, step.actions,
                                                                           step.rows))
        speeds = None if step.speeds is None else step.speeds.clone().to(device)
        logit = network(features, speeds).float()
        with torch.no_grad():
            anchor = reference(features, speeds).float()  # the warm start at the same speed
        actions = actions.float()
        log_prob = actions * F.logsigmoid(logit) + (1 - actions) * F.logsigmoid(-logit)
        weight = advantage.to(device)[rows][:, None]
        gradient = gradient - (weight * log_prob)[masked].sum()
        kl = kl + bernoulli_kl(logit, anchor)[masked].sum()
        count += int(masked.sum())
    count = max(count, 1)
    loss = gradient / count + kl_weight * kl / count
    return loss, {"kl": float(kl.detach()) / count, "decisions": float(count)}


class PromptSchedule:
    """Update ``u``'s prompts: a seeded permutation of the training prompts, cycled, a function of ``u`` alone,
    so a run resumed at any update draws the same prompts as an uninterrupted one."""

    def __init__(self, num_prompts: int, per_update: int, seed: int) -> None:
        self.num_prompts, self.per_update, self.seed = num_prompts, per_update, seed

    def __getitem__(self, update: int) -> torch.Tensor:
        per_epoch = max(self.num_prompts // self.per_update, 1)
        epoch, offset = divmod(update, per_epoch)
        order = torch.randperm(self.num_prompts, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return order[offset * self.per_update : (offset + 1) * self.per_update]


class SpeedSchedule:
    """Update ``u``'s speed weights, one per prompt group, in ``[low, high]``: a function of ``u`` alone (and the
    seed), so a resumed run draws the same as an uninterrupted one. ``uniform``, or ``log_uniform`` (``low > 0``):
    as many groups between 0.1 and 1 as between 1 and 10, so the accurate end of a wide range is trained as often
    as the fast one."""

    STREAM = 1 << 62  # keeps these draws apart from the rollouts' own generator seeds

    def __init__(self, low: float, high: float, groups: int, seed: int, draw: str = "uniform") -> None:
        self.low, self.high, self.groups, self.seed, self.draw = float(low), float(high), groups, seed, draw

    def __getitem__(self, update: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.STREAM + self.seed * 1_000_003 + update)
        drawn = torch.rand(self.groups, generator=generator, dtype=torch.float64)
        if self.draw == "log_uniform":
            return (self.low * (self.high / self.low) ** drawn).float()
        return (self.low + (self.high - self.low) * drawn).float()


@dataclass
class Environment:
    """What rollouts need besides the policy: the frozen dLLM, the task that scores, its prompts, the decode."""

    loaded: LoadedModel
    task: Task
    train: list[Example]
    val: list[Example]
    settings: DecodeSettings  # gen length, block, steps, EoTP of the rollouts and of the validation decodes
    group_size: int
    schedule: PromptSchedule  # which training prompts each update draws
    speeds: SpeedSchedule  # each update's speed weight per prompt group
    reward: str = "bonus"  # the reward's form (:func:`rewards`)
    encoded: dict[str, list[list[int]]] = field(init=False)  # the prompts' tokens, encoded once

    def __post_init__(self) -> None:
        self.encoded = {name: [encode_prompt(self.loaded.tokenizer, ex, self.task.chat_template) for ex in examples]
                        for name, examples in (("train", self.train), ("val", self.val))}

    def rollouts(self, network: BlockFilter, indices: Sequence[int], group_speeds: torch.Tensor,
                 seed: int) -> tuple[list[Decisions], dict]:
        """``group_size`` sampled decodes of each prompt, in one batch, each group at its own speed weight (the
        network's speed input and the reward's weight); their decisions and per-rollout figures."""
        drawn = [i for i in indices for _ in range(self.group_size)]
        examples = [self.train[i] for i in drawn]
        speeds = group_speeds.repeat_interleave(self.group_size)
        generator = torch.Generator(device=self.loaded.device).manual_seed(seed)
        policy = SampledFilter(network, self.settings.steps_per_block, generator, speeds)
        tokens, nfe = generate_batch(self.loaded.model, [self.encoded["train"][i] for i in drawn], policy,
                                     self.settings, self.loaded.mask_id, self.loaded.eos_id,
                                     device=self.loaded.device, generator=generator, end_ids=self.loaded.end_ids)
        scored = summarize(self.loaded, self.task, examples, DecodeOutput(tokens, nfe, 0.0, [0.0] * len(examples)))
        correct = torch.tensor([row["exact_match"] for row in scored["rows"]], dtype=torch.float32)
        return policy.decisions, {"correct": correct, "nfe": nfe.float(),
                                  "reward": rewards(correct, nfe, self.settings.gen_length, speeds, self.reward)}

    def evaluate(self, network: BlockFilter, threshold: float, speed: float) -> dict[str, float]:
        """The deterministic policy (probability against ``threshold``, at ``speed``) on the held-out prompts;
        its reward with ``speed`` as the speed weight."""
        policy = ReinforcedFilter(network, network.config.features, threshold, self.settings.steps_per_block, speed)
        out = run_decode(self.loaded, self.encoded["val"], policy, self.settings)
        scored = summarize(self.loaded, self.task, self.val, out)
        correct = torch.tensor([row["exact_match"] for row in scored["rows"]], dtype=torch.float32)
        reward = rewards(correct, out.nfe, self.settings.gen_length, speed, self.reward)  # per prompt, averaged
        metrics = scored["metrics"]
        return {"accuracy": metrics["accuracy"], "nfe": metrics["nfe_mean"], "reward": float(reward.mean())}


class PolicyGradientModule(L.LightningModule):
    """The policy (a filter network, warm-started) and its frozen warm start; one update per training batch."""

    def __init__(self, network: BlockFilter, lr: float, kl_weight: float, normalize_advantage: bool,
                 val_threshold: float, val_speed: float, seed: int) -> None:
        super().__init__()
        self.network = network
        # the frozen warm start; left in training mode like the policy (neither has dropout), so Lightning finds no
        # module in evaluation mode
        self.reference = copy.deepcopy(network).requires_grad_(False)
        self.lr, self.kl_weight, self.normalize = lr, kl_weight, normalize_advantage
        self.val_threshold, self.val_speed, self.seed = val_threshold, val_speed, seed
        self.environment: Environment | None = None  # attached before fit; never saved in checkpoints

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """One update: rollouts of this update's prompts at its speed weights (both chosen by the update's
        number, not the loader's position, which a resumed run restarts), then one policy-gradient step."""
        env = self.environment
        indices = env.schedule[self.global_step].tolist()
        decisions, figures = env.rollouts(self.network, indices, env.speeds[self.global_step],
                                          seed=self.seed * 1_000_003 + self.global_step)
        advantage = group_advantages(figures["reward"], env.group_size, self.normalize)
        loss, parts = policy_loss(self.network, self.reference, decisions, advantage, self.kl_weight)
        batch_size = len(indices) * env.group_size
        self.log_dict({"train/reward": figures["reward"].mean(), "train/accuracy": figures["correct"].mean(),
                       "train/nfe": figures["nfe"].mean()}, prog_bar=True, batch_size=batch_size)
        self.log_dict({"train/loss": loss.detach(), "train/kl": parts["kl"], "train/decisions": parts["decisions"]},
                      batch_size=batch_size)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        figures = self.environment.evaluate(self.network, self.val_threshold, self.val_speed)
        self.log_dict({f"val/{k}": v for k, v in figures.items()}, prog_bar=True, batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.network.parameters(), lr=self.lr, weight_decay=0.0)


def loaders(updates: int) -> tuple[DataLoader, DataLoader]:
    """One item per update (its prompts come from :class:`PromptSchedule`) and one validation batch."""
    return DataLoader(torch.arange(updates), batch_size=None), DataLoader([torch.zeros(1)], batch_size=None)


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
