"""``stage=train_policy``: reinforcement fine-tuning of the filter as an unmasking policy (GRPO-style), and the
``rl_filter`` grid policy that decodes with it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models.filter import BlockFilter, FilterConfig
from pipeline.decoding.loop import generate_batch
from pipeline.decoding.settings import DecodeSettings
from pipeline.learning.policy import (
    Decisions,
    PromptSchedule,
    SampledFilter,
    bernoulli_kl,
    center_on,
    group_advantages,
    policy_loss,
    rewards,
)
from tests.conftest import compose_config
from tests.test_cli import run_cli
from tests.test_decoding import EOS, MASK, prompts_for

TINY_RL = ["train_policy.updates=2", "train_policy.prompts_per_update=2", "train_policy.group_size=2",
           "train_policy.num_prompts=4", "train_policy.val_prompts=4", "train_policy.thresholds=[0.5,0.9]",
           "train_policy.val_every_n_updates=1", "train_policy.checkpoint_every_n_updates=1"]
FEATURES = ("confidence", "position")


def network(bias: float = 0.0) -> BlockFilter:
    torch.manual_seed(0)
    net = BlockFilter(FilterConfig(block_length=8, features=FEATURES, num_layers=1, hidden_size=8,
                                   architecture="transformer", num_heads=2))
    with torch.no_grad():
        net.head.bias.fill_(bias)
    return net


def test_a_wrong_answer_earns_nothing_and_a_right_one_more_the_fewer_passes_it_took():
    reward = rewards(torch.tensor([0.0, 1.0, 1.0, 1.0]), torch.tensor([2, 64, 32, 4]), 64, speed_weight=1.0)
    assert reward.tolist() == [0.0, 1.0, 1.5, 1.9375]
    assert rewards(torch.tensor([1.0]), torch.tensor([4]), 64, speed_weight=0.0).item() == 1.0


def test_advantages_are_each_rollout_against_its_own_groups_mean():
    reward = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.0, 0.0, 1.5, 0.5])
    advantage = group_advantages(reward, group_size=4, normalize=False)
    assert advantage.tolist() == [0.0, -1.0, 1.0, 0.0, -0.5, -0.5, 1.0, 0.0]
    scaled = group_advantages(reward, group_size=4, normalize=True).view(2, 4)
    assert torch.allclose(scaled.std(-1, unbiased=False), torch.ones(2), atol=1e-4)
    assert group_advantages(torch.ones(4), 2, True).abs().max() == 0, "a group that all agrees teaches nothing"


def test_the_kl_to_the_warm_start_is_zero_there_and_positive_elsewhere():
    logits = torch.tensor([-3.0, 0.0, 2.0])
    assert bernoulli_kl(logits, logits).abs().max() < 1e-6
    assert (bernoulli_kl(logits + 1, logits) > 0).all()


def test_a_rewarded_commit_becomes_likelier_and_a_punished_one_less_likely():
    net, reference = network(), network()
    features = torch.rand(2, 8, len(FEATURES))
    masked = torch.ones(2, 8, dtype=torch.bool)
    masked[:, 6:] = False  # committed positions: their decisions do not count
    actions = torch.zeros(2, 8, dtype=torch.bool)
    actions[:, :3] = True
    step = Decisions(torch.tensor([0, 1]), features, masked, actions)

    def log_likelihood() -> torch.Tensor:  # of each rollout's drawn actions, over its masked positions
        logit = net(features)
        chosen = torch.where(actions, torch.nn.functional.logsigmoid(logit), torch.nn.functional.logsigmoid(-logit))
        return (chosen * masked).sum(-1).detach()

    before = log_likelihood()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    loss, parts = policy_loss(net, reference, [step], torch.tensor([1.0, -1.0]), kl_weight=0.0)
    loss.backward()
    optimizer.step()
    after = log_likelihood()
    assert parts["decisions"] == 12 and parts["kl"] == 0.0
    assert after[0] > before[0] and after[1] < before[1]
    loss, parts = policy_loss(net, reference, [step], torch.tensor([0.0, 0.0]), kl_weight=1.0)
    assert parts["kl"] > 0 and loss > 0, "moved away from the warm start: the KL term now costs"


def test_rollouts_draw_from_the_policy_and_keep_the_schedules_commit(micro_model, tokenizer):
    settings = DecodeSettings(policy="rl_filter", gen_length=16, block_length=8, batch_size=4)
    prompts = prompts_for(tokenizer, 4)
    for bias, expect_nfe in ((-30.0, 16), (30.0, 2)):  # never accepts: one token per step; always: one pass a block
        policy = SampledFilter(network(bias), settings.steps_per_block, torch.Generator().manual_seed(0))
        _, nfe = generate_batch(micro_model, prompts, policy, settings, MASK, EOS)
        assert nfe.tolist() == [expect_nfe] * 4
        assert all((d.actions <= d.masked).all() for d in policy.decisions), "only masked positions are drawn"
    policy = SampledFilter(network(0.0), settings.steps_per_block, torch.Generator().manual_seed(0))
    _, nfe = generate_batch(micro_model, prompts, policy, settings, MASK, EOS)
    drawn = torch.cat([d.actions[d.masked] for d in policy.decisions]).float().mean()
    assert 2 < nfe.float().mean() < 16 and 0.3 < drawn < 0.7, "probability 0.5: about half the positions commit"


@pytest.mark.parametrize("architecture", ["mlp", "transformer"])
def test_centering_puts_probability_one_half_at_the_filters_threshold(architecture):
    torch.manual_seed(0)
    net = BlockFilter(FilterConfig(block_length=8, features=FEATURES, num_layers=2, architecture=architecture))
    features = torch.rand(3, 8, len(FEATURES))
    before = net(features).detach()
    after = center_on(net, 0.98)(features).detach()
    assert torch.allclose(before - after, torch.full_like(before, math.log(0.98 / 0.02)), atol=1e-5)


def test_each_updates_prompts_depend_on_its_number_alone():
    schedule = PromptSchedule(10, 4, seed=3)
    first = [schedule[u].tolist() for u in range(5)]
    assert first == [PromptSchedule(10, 4, seed=3)[u].tolist() for u in range(5)]
    assert sorted(first[0] + first[1]) == sorted(set(first[0] + first[1])), "no prompt twice within a pass"
    assert first[0] != PromptSchedule(10, 4, seed=4)[0].tolist()


@pytest.mark.slow
def test_the_stage_trains_resumes_and_its_policy_decodes_in_the_sweep(tmp_path):
    """Through the command line: the supervised filter, then the policy (reward, accuracy and NFE logged per
    update); a sweep with an ``rl_filter`` setting reuses it; a run resumed from the checkpoint of update 1 ends
    with the weights of an uninterrupted run."""
    out = tmp_path / "out"
    trained = run_cli("+experiment=micro", "filter=transformer1", "stage=train_policy", *TINY_RL,
                      f"output_dir={out}", "logger=none", "progress=false", timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "train_policy: update 2/2: reward" in trained.stderr
    artifact = next(p for p in (out / "artifacts" / "train_policy").iterdir() if p.is_dir())
    saved = json.loads((artifact / "policy" / "filter.json").read_text())
    assert saved["threshold"] in (0.5, 0.9) and saved["architecture"] == "transformer"
    metrics = json.loads((artifact / "metrics.json").read_text())
    assert metrics["updates"] == 2 and metrics["rollouts"] == 8 and "seconds" not in metrics
    assert 0 <= metrics["validated/accuracy"] <= 1
    assert json.loads((artifact / "timing.json").read_text())["minutes_per_1000_rollouts"] > 0
    logged = (artifact / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = logged[0].split(",")
    assert {"train/reward", "train/accuracy", "train/nfe", "train/kl", "val/accuracy"} <= set(header)

    grid = "sweep.grid=[{policy: vanilla}, {policy: rl_filter, threshold: [null, 0.9]}]"
    swept = run_cli("+experiment=micro", "filter=transformer1", "stage=sweep", *TINY_RL, grid,
                    "sweep.num_prompts=8", f"output_dir={out}", "logger=none", "progress=false", timeout=900)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert "train_policy" in swept.stderr and "reusing" in swept.stderr
    assert "sweep" in swept.stderr and "rl_filter t=validated" in swept.stderr and "rl_filter t=0.9" in swept.stderr
    timed = run_cli("+experiment=micro", "filter=transformer1", "stage=benchmark", *TINY_RL, grid,
                    "benchmark.num_prompts=4", "benchmark.warmup=1", "benchmark.batch_size=null", f"output_dir={out}",
                    "logger=none", "progress=false", timeout=900)
    assert timed.returncode == 0, timed.stderr[-3000:]
    assert "benchmark rl_filter t=0.9 L=32" in timed.stderr

    from pipeline.runtime.tracking import Tracker
    from pipeline.stages import train_policy
    from pipeline.stages.context import StageContext

    ctx = StageContext(compose_config(["+experiment=micro", "filter=transformer1", *TINY_RL,
                                       f"output_dir={out}", "logger=none", "progress=false"]))
    warm = ctx.store.load(train_policy.train_filter.spec(ctx))
    work, whole = tmp_path / "resumed", tmp_path / "whole"
    ctx.cfg.train_policy.updates = 1
    train_policy.fit(ctx, warm, work, Tracker())
    assert (work / "checkpoints" / "last.ckpt").exists()
    ctx.cfg.train_policy.updates = 2
    resumed = train_policy.fit(ctx, warm, work, Tracker())
    assert resumed["updates"] == 2
    train_policy.fit(ctx, warm, whole, Tracker())  # uninterrupted, in this process (same threads, same sums)
    assert torch.equal(*(torch.cat([t.flatten() for t in BlockFilter.load(folder).state_dict().values()])
                         for folder in (work / "policy", whole / "policy")))


def test_a_longer_window_experiment_shares_the_policy_of_the_one_that_trained_it():
    from pipeline.stages import train_policy
    from pipeline.stages.context import StageContext

    keys = {experiment: train_policy.spec(StageContext(compose_config([f"+experiment={experiment}"]))).key
            for experiment in ("frontier_chain_full", "frontier_chain_full_256", "frontier_chain_16")}
    assert keys["frontier_chain_full"] == keys["frontier_chain_full_256"] != keys["frontier_chain_16"]
