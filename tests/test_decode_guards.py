"""No decode runs forever and none decodes garbage quietly: every adaptive step commits, non-finite scores stop the
decode in one line, and settings that would overflow float32 are refused before the decode starts."""

from __future__ import annotations

import pytest
import torch

from models.errors import ConfigError, DecodeStall, NonFiniteError
from pipeline.decoding.loop import decode
from pipeline.decoding.policies import build_policy
from pipeline.decoding.settings import DecodeSettings
from pipeline.decoding.step import Policy, StepView
from tests.test_cli import MICRO, run_cli
from tests.test_decoding import EOS, MASK, prompts_for


class AcceptsNothing(Policy):
    """An adaptive rule that never commits: without a step cap its block loop would never end."""

    name = "accepts_nothing"

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(view.masked), view.predicted


def test_an_adaptive_rule_that_commits_nothing_ends_each_block_within_its_length(micro_model, tokenizer):
    settings = DecodeSettings(gen_length=16, block_length=8, batch_size=2)
    out = decode(micro_model, prompts_for(tokenizer, 2), AcceptsNothing(), settings, MASK, EOS)
    assert (out.tokens != MASK).all(), "every position was committed"
    assert out.nfe.tolist() == [16, 16], "one position per step: the schedule's top-1 fallback"


def test_non_finite_logits_stop_the_decode_naming_where(micro_model, tokenizer):
    def poison(module, inputs, logits):
        return torch.full_like(logits, float("nan"))

    handle = micro_model.lm_head.register_forward_hook(poison)
    try:
        for policy in ("threshold", "vanilla"):
            settings = DecodeSettings(policy=policy, gen_length=8, block_length=8, batch_size=1)
            with pytest.raises(NonFiniteError, match=r"not finite \(NaN or inf\) at block 0, step 0"):
                decode(micro_model, prompts_for(tokenizer, 1), build_policy(settings), settings, MASK, EOS)
    finally:
        handle.remove()


def test_a_model_that_predicts_only_the_mask_token_stalls_in_one_line_when_it_may_be_committed(micro_model, tokenizer):
    """``mask_token=included`` commits the references' argmax, the mask token too; a model that only predicts it
    would loop forever under an adaptive rule (as the references' ``while`` loops do). Excluded, it decodes."""
    def mask_wins(module, inputs, logits):
        logits = logits.clone()
        logits[..., MASK] = 1e4
        return logits

    handle = micro_model.lm_head.register_forward_hook(mask_wins)
    try:
        settings = DecodeSettings(policy="threshold", gen_length=8, block_length=8, batch_size=2,
                                  mask_token="included")
        with pytest.raises(DecodeStall, match="predicted only the mask token for 9 steps in a row at block 0"):
            decode(micro_model, prompts_for(tokenizer, 2), build_policy(settings), settings, MASK, EOS)
        vanilla = settings.replace(policy="vanilla")
        left = decode(micro_model, prompts_for(tokenizer, 2), build_policy(vanilla), vanilla, MASK, EOS).tokens
        assert (left == MASK).all(), "a fixed schedule ends its steps with the mask committed, as LLaDA's generate"
        excluded = settings.replace(mask_token="excluded")
        out = decode(micro_model, prompts_for(tokenizer, 2), build_policy(excluded), excluded, MASK, EOS).tokens
        assert (out != MASK).all()
    finally:
        handle.remove()


@pytest.mark.parametrize("changes,setting", [
    ({"credit_beta": 1e300}, "decode.credit_beta"),
    ({"credit_beta": 1e3, "block_length": 64, "gen_length": 64}, "decode.credit_beta"),
    ({"credit_alpha": 1e38}, "decode.credit_alpha"),
    ({"policy": "local_leap", "threshold": 0.8, "relaxed_threshold": 0.9}, "decode.relaxed_threshold"),
])
def test_settings_that_overflow_or_contradict_are_refused(changes, setting):
    settings = DecodeSettings(**{"policy": "credit", "gen_length": 32, "block_length": 8, **changes})
    with pytest.raises(ConfigError, match=f"^{setting}="):
        settings.validate()


def test_credit_settings_inside_float32_are_kept():
    DecodeSettings(policy="credit", credit_beta=1e3, block_length=8, gen_length=32).validate()  # 1e21: fits
    DecodeSettings(policy="credit", credit_beta=1.0, credit_alpha=1e30, block_length=32, gen_length=32).validate()


@pytest.mark.parametrize("args,message", [
    (["decode=credit", "decode.credit_beta=1e300"], "decode.credit_beta=1e+300: the credit it keeps over a block"),
    (["decode=credit", "decode.credit_alpha=1e38"], "decode.credit_alpha=1e+38: alpha * log(1 + credit) overflows"),
    (["sweep.grid=[{policy: credit, credit_beta: 1e30}]"], "sweep.grid[0].credit_beta=1e+30"),
    (["decode=local_leap", "decode.relaxed_threshold=0.95"],
     "decode.relaxed_threshold=0.95: above decode.threshold (0.9)"),
    (["decode.mask_token=sometimes"], "decode.mask_token=sometimes: allowed: excluded, included"),
    (["decode.eotp=true", "decode.eotp_rule=learn2pd", "decode.cache=dual"],
     "decode.cache=dual: with eotp_rule=learn2pd reproduces no decoder"),
])
def test_the_command_line_refuses_them_in_one_line(tmp_path, args, message):
    result = run_cli(MICRO, f"output_dir={tmp_path}", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0], "one line"
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert not any(tmp_path.iterdir()), "nothing written"
