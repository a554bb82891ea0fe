"""The recent training-free rules (``decode=local_leap``, ``credit``, ``prophet``): their published decisions on
hand-made steps, and each decoding through the CLI like any policy."""

from __future__ import annotations

import pytest
import torch

from pipeline.decoding.policies import build_policy
from pipeline.decoding.settings import DecodeSettings
from pipeline.decoding.step import StepView
from pipeline.decoding.training_free import CreditDecoding, LocalLeap, Prophet
from tests.test_cli import MICRO, run_cli


def view_of(logits: torch.Tensor, masked: torch.Tensor, step: int = 0, block: int = 0, k: int = 1) -> StepView:
    probs = torch.softmax(logits, -1)
    confidence, predicted = probs.max(-1)
    n = logits.shape[0]
    return StepView(logits, predicted, confidence, confidence, masked, torch.full((n,), k), torch.arange(n), block,
                    0, step)


def logits_with(confidences: list[float], vocab: int = 6) -> torch.Tensor:
    """One row whose positions predict token 1 with the given probabilities (the rest spread evenly)."""
    rows = []
    for c in confidences:
        p = torch.full((vocab,), (1 - c) / (vocab - 1))
        p[1] = c
        rows.append(p.log())
    return torch.stack(rows)[None]


def test_local_leap_relaxes_the_bar_next_to_an_anchor():
    conf = [0.95, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.5]  # an anchor at 0; 0.8 passes the relaxed bar within radius 2
    view = view_of(logits_with(conf), torch.ones(1, 8, dtype=torch.bool))
    commit, _ = LocalLeap(0.9, 0.75, radius=2).select(view)
    assert commit[0].tolist() == [True, True, True, False, False, False, False, False]
    commit, _ = LocalLeap(0.9, 0.75, radius=0).select(view)
    assert commit[0].tolist() == [True] + [False] * 7, "radius 0: a plain threshold"
    none = view_of(logits_with([0.6, 0.7, 0.5]), torch.ones(1, 3, dtype=torch.bool))
    assert LocalLeap().select(none)[0][0].tolist() == [False, True, False], "no anchor: the most confident alone"


def spread(choices: dict[int, float], vocab: int = 6) -> torch.Tensor:
    """Log-probabilities of one position: the given tokens' probabilities, the rest spread evenly."""
    rest = (1 - sum(choices.values())) / (vocab - len(choices))
    p = torch.full((vocab,), rest)
    for token, prob in choices.items():
        p[token] = prob
    return p.log()


def test_credit_accumulates_for_the_predicted_token_and_keeps_a_steady_prediction():
    """Four steps predicting token 2 at 0.5 leave credit sum(0.8^i) * 0.5^0.2 on it; when token 3 then edges
    ahead (0.46 against 0.44) the fused prediction stays 2. The most confident position commits (the 0.9 bar
    is lowered to the best), and credit restarts with each block."""
    policy = CreditDecoding(threshold=0.9)
    policy.prepare(1, None)
    masked = torch.ones(1, 2, dtype=torch.bool)
    steady = torch.stack([spread({2: 0.5, 3: 0.4}), spread({1: 0.3})])[None]
    for step in range(4):
        commit, tokens = policy.select(view_of(steady, masked, step=step))
        assert commit[0].tolist() == [True, False] and tokens[0, 0] == 2
    expected = sum(0.8 ** i for i in range(4)) * 0.5 ** 0.2
    assert float(policy.credit[0, 0, 2]) == pytest.approx(expected, rel=1e-5)
    edged = torch.stack([spread({2: 0.44, 3: 0.46}), spread({1: 0.3})])[None]
    view = view_of(edged, masked, step=4)
    assert view.predicted[0, 0] == 3
    _, tokens = policy.select(view)
    assert tokens[0, 0] == 2, "the credit keeps the steady prediction"
    _, tokens = policy.select(view_of(edged, masked, step=0, block=1))
    assert tokens[0, 0] == 3, "a new block starts without credit"
    assert float(policy.credit[0, 0, 2]) == 0.0


def test_prophet_commits_the_rest_once_the_gap_passes_its_bar_and_keeps_committing_blocks_whole():
    policy = Prophet(steps_per_block=4, num_blocks=2)
    policy.prepare(2, None)
    sure = torch.full((2, 4, 6), -5.0)
    sure[0, :, 1] = 5.0  # row 0: gap 10 >= 7.5 (first third); row 1: flat
    masked = torch.ones(2, 4, dtype=torch.bool)
    commit, _ = policy.select(view_of(sure, masked, step=0, k=1))
    assert commit[0].tolist() == [True] * 4 and commit[1].sum() == 1
    flat = torch.zeros(2, 4, 6)
    commit, _ = policy.select(view_of(flat, masked, step=0, block=1, k=1))
    assert commit[0].all() and commit[1].sum() == 1, "a fired sample commits each later block whole"


@pytest.mark.parametrize("policy", ["local_leap", "credit", "prophet"])
def test_each_rule_decodes_through_the_cli(tmp_path, policy):
    result = run_cli(MICRO, "stage=evaluate", f"decode={policy}", "eval.num_prompts=8", f"output_dir={tmp_path}",
                     "logger=none", "progress=false")
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(result.stdout.split("accuracy")[1].split("%")[0])
    nfe = float(result.stdout.split("NFE")[1].split("mean")[1].split(",")[0])
    assert accuracy >= 37.5 and nfe < 16, "within a prompt of vanilla's 50.0% at a fraction of its 32 passes"


def test_the_rules_are_built_from_their_settings():
    settings = DecodeSettings(policy="local_leap", relaxed_threshold=0.6, radius=3)
    leap = build_policy(settings)
    assert (leap.threshold, leap.relaxed, leap.radius) == (0.9, 0.6, 3)
    credit = build_policy(DecodeSettings(policy="credit", credit_beta=0.5))
    assert (credit.alpha, credit.gamma, credit.beta) == (0.7, 0.2, 0.5)
    prophet = build_policy(DecodeSettings(policy="prophet", gen_length=64, block_length=16))
    assert prophet.total == 64
    with pytest.raises(Exception, match="decode.radius"):
        build_policy(DecodeSettings(policy="local_leap", radius=-1))
