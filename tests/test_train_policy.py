"""``stage=train_policy``: reinforcement fine-tuning of the filter as an unmasking policy (GRPO-style), conditioned
on the speed preference so one policy serves every operating point, and the ``rl_filter`` grid policy that decodes
with it at a chosen speed."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models.errors import ConfigError
from models.filter import BlockFilter, FilterConfig, speed_conditioned
from models.saved_files import FILTER_DEFAULTS, filter_tensor_shapes
from pipeline.configuration.command import expand_grid
from pipeline.configuration.validation import validate
from pipeline.decoding.loop import generate_batch
from pipeline.decoding.policies import build_policy
from pipeline.decoding.settings import DecodeSettings
from pipeline.learning import policy as rl
from pipeline.learning.policy import (
    Decisions,
    Environment,
    PromptSchedule,
    SampledFilter,
    SpeedSchedule,
    bernoulli_kl,
    center_on,
    group_advantages,
    policy_loss,
    rewards,
)
from pipeline.modeling.loading import LoadedModel
from pipeline.stages import train_policy
from pipeline.stages.sweep import describe
from pipeline.tasks.arith import ChainedAddition
from tests.conftest import compose_config
from tests.test_cli import run_cli
from tests.test_decoding import EOS, MASK, prompts_for

TINY_RL = ["train_policy.updates=2", "train_policy.prompts_per_update=2", "train_policy.group_size=2",
           "train_policy.num_prompts=4", "train_policy.val_prompts=4", "train_policy.knob=[0.0,4.0]",
           "train_policy.val_every_n_updates=1", "train_policy.checkpoint_every_n_updates=1"]
FEATURES = ("confidence", "position")


def network(bias: float = 0.0) -> BlockFilter:
    torch.manual_seed(0)
    net = BlockFilter(FilterConfig(block_length=8, features=FEATURES, num_layers=1, hidden_size=8,
                                   architecture="transformer", num_heads=2))
    with torch.no_grad():
        net.head.bias.fill_(bias)
    return net


def conditioned(architecture: str, seed: int = 0) -> BlockFilter:
    """A speed-conditioned filter whose speed head is random, not its warm start's constant."""
    torch.manual_seed(seed)
    net = BlockFilter(FilterConfig(block_length=8, features=FEATURES, num_layers=2, hidden_size=8,
                                   architecture=architecture, num_heads=2, speed_conditioned=True))
    with torch.no_grad():
        net.speed_head.weight.normal_(0, 2.0)
        net.speed_head.bias.normal_(0, 2.0)
    return net


def test_a_wrong_answer_earns_nothing_and_a_right_one_more_the_fewer_passes_it_took():
    reward = rewards(torch.tensor([0.0, 1.0, 1.0, 1.0]), torch.tensor([2, 64, 32, 4]), 64, speed_weight=1.0)
    assert reward.tolist() == [0.0, 1.0, 1.5, 1.9375]
    assert rewards(torch.tensor([1.0]), torch.tensor([4]), 64, speed_weight=0.0).item() == 1.0
    per_rollout = rewards(torch.ones(3), torch.tensor([32, 32, 32]), 64, speed_weight=torch.tensor([0.0, 1.0, 4.0]))
    assert per_rollout.tolist() == [1.0, 1.5, 3.0], "each rollout at its own weight"


def test_log_uniform_speed_weights_stay_in_range_and_split_at_the_geometric_mean():
    schedule = SpeedSchedule(0.1, 10.0, 4000, seed=0, draw="log_uniform")
    drawn = schedule[3]
    assert drawn.min() >= 0.1 and drawn.max() <= 10.0
    assert abs(float((drawn < 1.0).float().mean()) - 0.5) < 0.03, "as many below 1 as above"
    assert torch.equal(drawn, SpeedSchedule(0.1, 10.0, 4000, seed=0, draw="log_uniform")[3])


def test_the_cost_reward_charges_every_pass_right_or_wrong_without_bound():
    correct, nfe = torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([64, 8, 64, 8])
    assert rewards(correct, nfe, 64, 1.0, "cost").tolist() == [-1.0, -0.125, 0.0, 0.875]

    def gain(form: str, weight: float) -> float:  # what going from 10 to 6 passes of 64 earns a right answer
        right = torch.ones(1)
        return rewards(right, torch.tensor([6]), 64, weight, form).item() - \
            rewards(right, torch.tensor([10]), 64, weight, form).item()

    assert gain("bonus", 1e6) / rewards(torch.ones(1), torch.tensor([10]), 64, 1e6).item() < 0.08, "bounded"
    assert gain("cost", 16.0) == pytest.approx(1.0), "a right answer's worth, at weight 16"


@pytest.mark.parametrize("architecture", ["mlp", "transformer"])
def test_every_logit_rises_with_the_speed_so_a_faster_setting_commits_a_superset(architecture):
    net = conditioned(architecture)
    features = torch.rand(16, 8, len(FEATURES))
    speeds = torch.tensor([0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 8.0])
    logits = torch.stack([net(features, torch.full((16,), float(s))) for s in speeds]).detach()
    assert (logits.diff(dim=0) >= 0).all()
    assert (logits[-1] > logits[0]).all()
    per_row = net(features[:2], torch.tensor([0.0, 4.0])).detach()
    assert torch.allclose(per_row, torch.stack([logits[0, 0], logits[5, 1]])), "each row at its own speed"


@pytest.mark.parametrize("architecture", ["mlp", "transformer"])
def test_a_conditioned_filter_needs_a_speed_and_an_unconditioned_one_refuses_it(architecture):
    net, features = conditioned(architecture), torch.rand(2, 8, len(FEATURES))
    with pytest.raises(ValueError, match="speed-conditioned: give the speed"):
        net(features)
    plain = BlockFilter(FilterConfig(block_length=8, features=FEATURES, architecture=architecture))
    with pytest.raises(ValueError, match="not speed-conditioned"):
        plain(features, torch.zeros(2))
    with pytest.raises(ValueError, match="speed-conditioned already"):
        speed_conditioned(net)


@pytest.mark.parametrize("architecture", ["mlp", "transformer"])
def test_the_conditioned_warm_start_is_the_centred_filter_shifted_by_the_speed(architecture):
    torch.manual_seed(0)
    supervised = BlockFilter(FilterConfig(block_length=8, features=FEATURES, num_layers=2, architecture=architecture,
                                          threshold=0.9))
    features = torch.rand(3, 8, len(FEATURES))
    before = supervised(features).detach()
    start = train_policy.warm_start(copy_of(supervised), center=True, fallback=0.5)
    assert start.config.speed_conditioned and start.config.threshold == 0.9
    centred = before - math.log(0.9 / 0.1)
    for speed in (0.0, 1.0, 4.0):
        shifted = start(features, torch.full((3,), speed)).detach()
        assert torch.allclose(shifted, centred + speed, atol=1e-5), "a uniform shift: at first the speed is a threshold"
    assert torch.allclose(train_policy.warm_start(copy_of(supervised), False, 0.5)(features, torch.zeros(3)), before)


def copy_of(network: BlockFilter) -> BlockFilter:
    again = BlockFilter(network.config)
    again.load_state_dict(network.state_dict())
    return again


@pytest.mark.parametrize("architecture", ["mlp", "transformer"])
def test_a_conditioned_filter_is_saved_with_its_speed_and_an_old_one_still_loads(architecture, tmp_path):
    net = conditioned(architecture)
    net.config = FilterConfig(**{**net.config.__dict__, "speed": 2.0})
    assert filter_tensor_shapes({**FILTER_DEFAULTS, **json.loads(json.dumps(net.config.__dict__))}) == \
        {name: tuple(t.shape) for name, t in net.state_dict().items()}
    net.save(tmp_path / "policy")
    again = BlockFilter.load(tmp_path / "policy")
    features, speed = torch.rand(2, 8, len(FEATURES)), torch.tensor([0.0, 2.0])
    assert again.config == net.config and torch.equal(again(features, speed), net(features, speed))
    old = BlockFilter(FilterConfig(block_length=8, features=FEATURES, architecture=architecture))
    old.save(tmp_path / "old")
    fields = json.loads((tmp_path / "old" / "filter.json").read_text())
    (tmp_path / "old" / "filter.json").write_text(json.dumps({k: v for k, v in fields.items()
                                                               if k not in ("speed_conditioned", "speed")}))
    assert not BlockFilter.load(tmp_path / "old").config.speed_conditioned


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


def test_each_updates_speed_weights_depend_on_its_number_alone_and_lie_in_range():
    schedule = SpeedSchedule(0.5, 4.0, groups=8, seed=3)
    drawn = torch.stack([schedule[u] for u in range(20)])
    assert drawn.shape == (20, 8) and (drawn >= 0.5).all() and (drawn <= 4.0).all()
    assert torch.equal(drawn[7], SpeedSchedule(0.5, 4.0, 8, seed=3)[7]), "a resumed run draws the same"
    assert drawn.std() > 0.5 and not torch.equal(drawn[0], drawn[1])
    assert not torch.equal(drawn[0], SpeedSchedule(0.5, 4.0, 8, seed=4)[0])
    assert SpeedSchedule(1.0, 1.0, 4, seed=0)[5].tolist() == [1.0] * 4, "low == high: one fixed preference"


def test_each_groups_rollouts_run_and_are_rewarded_at_its_own_speed_weight(micro_model, tokenizer, monkeypatch):
    loaded = LoadedModel(micro_model, tokenizer, MASK, EOS, None, torch.device("cpu"), end_ids=(EOS,))
    task = ChainedAddition()
    settings = DecodeSettings(policy="rl_filter", gen_length=16, block_length=8, batch_size=6)
    env = Environment(loaded, task, task.examples("validation", 3), [], settings, group_size=2,
                      schedule=PromptSchedule(3, 3, seed=0), speeds=SpeedSchedule(0.0, 4.0, 3, seed=0))
    monkeypatch.setattr(rl, "summarize", lambda loaded, task, examples, out: {
        "rows": [{"exact_match": 1.0} for _ in examples]})  # every answer right: the reward is the speed's alone
    group_speeds = torch.tensor([0.0, 1.0, 4.0])
    net = speed_conditioned(network())
    decisions, figures = env.rollouts(net, [0, 1, 2], group_speeds, seed=0)
    weights = torch.tensor([0.0, 0.0, 1.0, 1.0, 4.0, 4.0])
    assert torch.allclose(figures["reward"], 1 + weights * (1 - figures["nfe"] / 16))
    for step in decisions:
        assert torch.equal(step.speeds, weights[step.rows]), "each row's speed input is its group's weight"
    loss, _ = policy_loss(net, copy_of(net), decisions, torch.ones(6), kl_weight=1.0)
    loss.backward()
    assert net.speed_head.weight.grad.abs().sum() > 0, "the loss reaches the speed head"


def test_each_updates_prompts_depend_on_its_number_alone():
    schedule = PromptSchedule(10, 4, seed=3)
    first = [schedule[u].tolist() for u in range(5)]
    assert first == [PromptSchedule(10, 4, seed=3)[u].tolist() for u in range(5)]
    assert sorted(first[0] + first[1]) == sorted(set(first[0] + first[1])), "no prompt twice within a pass"
    assert first[0] != PromptSchedule(10, 4, seed=4)[0].tolist()


def point(speed: float, nfe: float, accuracy: float) -> dict[str, float]:
    return {"speed": speed, "accuracy": accuracy, "nfe": nfe, "reward": 0.0}


def test_a_knob_whose_passes_rise_with_the_speed_is_refused_naming_its_points():
    train_policy.check_monotone([point(0.0, 10.0, 0.9), point(1.0, 8.0, 0.9), point(2.0, 8.0, 0.8)])
    with pytest.raises(train_policy.NonMonotoneKnob) as refused:
        train_policy.check_monotone([point(0.0, 10.0, 0.9), point(1.0, 8.0, 0.9), point(2.0, 8.5, 0.8)])
    said = str(refused.value)
    assert "\n" not in said and "speed 2 took 8.50 forward passes" in said and "8.00 at speed 1" in said
    assert "0: 10.00, 1: 8.00, 2: 8.50" in said


def test_the_default_speed_is_the_fastest_within_half_a_point_of_the_best_accuracy():
    curve = [point(0.0, 10.0, 0.900), point(1.0, 8.0, 0.903), point(2.0, 6.0, 0.8985), point(4.0, 4.0, 0.89)]
    assert train_policy.default_point(curve)["speed"] == 2.0
    assert train_policy.default_point(curve[:1])["speed"] == 0.0


def test_a_grid_entry_expands_over_speeds_with_distinct_labels():
    grid = "sweep.grid=[{policy: rl_filter, threshold: [null], speed: [null, 0.0, 4.0]}]"
    cfg = compose_config(["+experiment=micro", grid])
    settings = expand_grid(cfg)
    assert [s.speed for s in settings] == [None, 0.0, 4.0]
    assert [describe(s) for s in settings] == ["rl_filter t=validated s=validated L=32", "rl_filter t=validated "
                                               "s=0.0 L=32", "rl_filter t=validated s=4.0 L=32"]
    assert len({json.dumps(s.identity()) for s in settings}) == 3


@pytest.mark.parametrize("architecture", ["mlp", "transformer"])
def test_a_speed_for_a_policy_without_one_is_a_one_line_config_error(architecture, tmp_path):
    plain = BlockFilter(FilterConfig(block_length=8, features=FEATURES, threshold=0.5, architecture=architecture))
    plain.save(tmp_path / "plain")
    settings = DecodeSettings(policy="rl_filter", gen_length=32, block_length=8, speed=1.0,
                              filter_path=str(tmp_path / "plain"))
    with pytest.raises(ConfigError, match=r"^decode\.speed=1\.0: the policy at .* is not speed-conditioned") as e:
        build_policy(settings)
    assert "\n" not in str(e.value)
    assert build_policy(settings.replace(speed=None)).speed is None
    cfg = compose_config(["+experiment=micro", "stage=evaluate", "decode=rl_filter", "decode.speed=1.0",
                          f"decode.filter_path={tmp_path / 'plain'}", f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match=r"^decode\.speed=1\.0: the policy at .* allowed: null$"):
        validate(cfg)
    speedy = conditioned(architecture)
    speedy.config = FilterConfig(**{**speedy.config.__dict__, "threshold": 0.5})
    speedy.save(tmp_path / "speedy")
    with pytest.raises(ConfigError, match=r"^decode\.speed=null: the speed-conditioned policy at .* stores no"):
        build_policy(settings.replace(speed=None, filter_path=str(tmp_path / "speedy")))
    assert build_policy(settings.replace(speed=2.0, filter_path=str(tmp_path / "speedy"))).speed == 2.0


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
    assert saved["threshold"] == 0.5 and saved["architecture"] == "transformer" and saved["speed_conditioned"]
    knob = json.loads((artifact / "policy" / "knob.json").read_text())
    assert knob["default"] == saved["speed"] in (0.0, 4.0) and [p["speed"] for p in knob["curve"]] == [0.0, 4.0]
    assert knob["curve"][1]["nfe"] <= knob["curve"][0]["nfe"], "faster at the higher speed"
    metrics = json.loads((artifact / "metrics.json").read_text())
    assert metrics["updates"] == 2 and metrics["rollouts"] == 8 and "seconds" not in metrics
    assert 0 <= metrics["validated/accuracy"] <= 1 and metrics["validated/speed"] == saved["speed"]
    assert metrics["validated/curve"] == knob["curve"] and metrics["warm_start/speed"] == saved["speed"]
    assert 0 <= metrics["warm_start/accuracy"] <= 1
    assert json.loads((artifact / "timing.json").read_text())["minutes_per_1000_rollouts"] > 0
    logged = (artifact / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = logged[0].split(",")
    assert {"train/reward", "train/accuracy", "train/nfe", "train/kl", "val/accuracy"} <= set(header)

    grid = "sweep.grid=[{policy: vanilla}, {policy: rl_filter, threshold: [null], speed: [null, 0.0, 4.0]}]"
    swept = run_cli("+experiment=micro", "filter=transformer1", "stage=sweep", *TINY_RL, grid,
                    "sweep.num_prompts=8", f"output_dir={out}", "logger=none", "progress=false", timeout=900)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert "train_policy" in swept.stderr and "reusing" in swept.stderr
    assert all(f"rl_filter t=validated s={s} L=32" in swept.stderr for s in ("validated", "0.0", "4.0"))
    results = [json.loads(p.read_text()) for p in (out / "artifacts" / "sweep").glob("*/result.json")]
    nfe = {r["setting"]["speed"]: r["metrics"]["nfe_mean"] for r in results if r["setting"]["policy"] == "rl_filter"}
    assert nfe[4.0] < nfe[0.0] and nfe[None] == nfe[saved["speed"]], "the speed reaches the decode"
    timed = run_cli("+experiment=micro", "filter=transformer1", "stage=benchmark", *TINY_RL, grid,
                    "benchmark.num_prompts=4", "benchmark.warmup=1", "benchmark.batch_size=null", f"output_dir={out}",
                    "logger=none", "progress=false", timeout=900)
    assert timed.returncode == 0, timed.stderr[-3000:]
    assert "benchmark rl_filter t=validated s=4.0 L=32" in timed.stderr

    from pipeline.runtime.tracking import Tracker
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
    from pipeline.stages.context import StageContext

    keys = {experiment: train_policy.spec(StageContext(compose_config([f"+experiment={experiment}"]))).key
            for experiment in ("frontier_chain_full", "frontier_chain_full_256", "frontier_chain_16")}
    assert keys["frontier_chain_full"] == keys["frontier_chain_full_256"] != keys["frontier_chain_16"]
