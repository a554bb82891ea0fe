"""The decoding engine: LLaDA's schedule, the oracle, thresholds, EoTP, batching, and bad input."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from models import DiffusionLM, DiffusionLMConfig
from pipeline.configuration.validation import FEATURES as VALIDATED_FEATURES
from pipeline.decoding.features import FEATURES, block_features
from pipeline.decoding.loop import StepHistory, decode
from pipeline.decoding.policies import (
    EntropyBounded,
    ExtremelyGreedy,
    Factor,
    LearnedFilter,
    StableConfidence,
    Threshold,
    Vanilla,
    build_policy,
    policy_classes,
)
from pipeline.decoding.reference import llada_generate
from pipeline.decoding.schedule import gumbel_argmax, top_k_mask, vanilla_schedule
from pipeline.decoding.settings import POLICY_PARAMETERS, DecodeSettings
from pipeline.decoding.step import StepView
from pipeline.tasks import ChainedAddition
from pipeline.tasks.prompts import encode_prompt
from tests import fidelity_references as references

MASK, EOS = 1, 0


def prompts_for(tokenizer, n: int, split: str = "test") -> list[list[int]]:
    return [encode_prompt(tokenizer, ex) for ex in ChainedAddition().examples(split, n)]


@pytest.fixture(scope="module")
def shipped_vanilla(shipped_model):
    """The shipped model's vanilla decode of the first ``count`` test prompts, computed once per setting: several
    tests hold a policy against the same vanilla decode, the costliest decode here (one pass per token)."""
    model, tokenizer = shipped_model
    done = {}

    def vanilla(count: int, settings: DecodeSettings):
        key = (count, repr(settings))
        if key not in done:
            done[key] = decode(model, prompts_for(tokenizer, count), Vanilla(), settings, MASK, EOS)
        return copy.deepcopy(done[key])  # a test that changed its copy would change no other test's

    return vanilla


def test_schedule_spreads_the_remainder_over_the_first_steps():
    assert vanilla_schedule(torch.tensor([32, 10, 7]), 4).tolist() == [[8, 8, 8, 8], [3, 3, 2, 2], [2, 2, 2, 1]]


@pytest.mark.parametrize("gen_length,block_length,steps", [(32, 8, 32), (32, 8, 12), (24, 24, 10), (16, 4, 8)])
def test_vanilla_matches_an_independent_statement_of_llada(micro_model, tokenizer, gen_length, block_length, steps):
    settings = DecodeSettings(gen_length=gen_length, block_length=block_length, steps=steps, batch_size=1)
    for prompt in prompts_for(tokenizer, 4):
        ours = decode(micro_model, [prompt], Vanilla(), settings, MASK, EOS)
        expected, forwards = llada_generate(micro_model, prompt, gen_length, block_length, steps, MASK)
        assert ours.tokens[0].tolist() == expected.tolist()
        assert int(ours.nfe[0]) <= forwards  # LLaDA also runs steps that commit nothing; the loop skips those


def test_batched_and_one_by_one_decoding_agree(micro_model, tokenizer):
    prompts = [p[: len(p) - i % 4] for i, p in enumerate(prompts_for(tokenizer, 7))]  # lengths 7 to 10
    assert len({len(p) for p in prompts}) > 1, "prompts of different lengths exercise the padding"
    for policy in (Vanilla(), Threshold(0.5)):
        for eotp in (False, True):
            settings = DecodeSettings(gen_length=32, block_length=8, batch_size=4, eotp=eotp)
            batched = decode(micro_model, prompts, policy, settings, MASK, EOS)
            single = [decode(micro_model, [p], policy, dataclasses.replace(settings, batch_size=1), MASK, EOS)
                      for p in prompts]
            assert torch.equal(batched.tokens, torch.cat([s.tokens for s in single]))
            assert torch.equal(batched.nfe, torch.cat([s.nfe for s in single]))


def test_a_threshold_nothing_passes_decodes_one_token_per_step(micro_model, tokenizer):
    prompts = prompts_for(tokenizer, 5)
    settings = DecodeSettings(gen_length=32, block_length=8)
    strict = decode(micro_model, prompts, Threshold(1.0), settings, MASK, EOS)
    vanilla = decode(micro_model, prompts, Vanilla(), settings, MASK, EOS)
    assert strict.nfe.tolist() == [32] * 5
    assert torch.equal(strict.tokens, vanilla.tokens)


def test_a_filter_that_rejects_everything_is_vanilla_and_one_that_accepts_everything_fills_blocks(micro_model,
                                                                                                   tokenizer):
    prompts = prompts_for(tokenizer, 3)
    settings = DecodeSettings(gen_length=32, block_length=8)
    vanilla = decode(micro_model, prompts, Vanilla(), settings, MASK, EOS)

    class Constant(torch.nn.Module):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def forward(self, features):
            return torch.full(features.shape[:2], self.value)

    reject = decode(micro_model, prompts, LearnedFilter(Constant(-10.0)), settings, MASK, EOS)
    assert torch.equal(reject.tokens, vanilla.tokens) and torch.equal(reject.nfe, vanilla.nfe)
    accept = decode(micro_model, prompts, LearnedFilter(Constant(10.0)), settings, MASK, EOS)
    assert accept.nfe.tolist() == [4, 4, 4]  # one step per block


@pytest.mark.parametrize("strict,loose", [(Factor(0.01), Factor(100.0)), (EntropyBounded(0.0), EntropyBounded(1e6))],
                         ids=["factor", "entropy_bounded"])
def test_a_rule_commits_one_token_per_step_at_its_strictest_and_a_block_at_its_loosest(micro_model, tokenizer,
                                                                                       strict, loose):
    prompts = prompts_for(tokenizer, 4)
    settings = DecodeSettings(gen_length=32, block_length=8)
    tight = decode(micro_model, prompts, strict, settings, MASK, EOS)
    wide = decode(micro_model, prompts, loose, settings, MASK, EOS)
    assert tight.nfe.tolist() == [32] * 4 and wide.nfe.tolist() == [4] * 4


def test_random_remasking_and_sampling_are_seeded(micro_model, tokenizer):
    prompts = prompts_for(tokenizer, 3)
    settings = DecodeSettings(gen_length=16, block_length=8, remasking="random", temperature=1.0, seed=3)
    first = decode(micro_model, prompts, Vanilla(), settings, MASK, EOS)
    again = decode(micro_model, prompts, Vanilla(), settings, MASK, EOS)
    other = decode(micro_model, prompts, Vanilla(), dataclasses.replace(settings, seed=4), MASK, EOS)
    assert torch.equal(first.tokens, again.tokens)
    assert not torch.equal(first.tokens, other.tokens)


def test_gumbel_max_samples_the_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(20000, 3)
    generator = torch.Generator().manual_seed(0)
    draws = gumbel_argmax(logits, 1.0, generator)
    frequencies = torch.bincount(draws, minlength=3).double() / len(draws)
    assert torch.allclose(frequencies, torch.softmax(logits[0].double(), -1), atol=0.015)
    assert torch.equal(gumbel_argmax(logits, 0.0, None), logits.argmax(-1))


@pytest.mark.parametrize("window,count", [((64, 16), 16), ((128, 32), 2)])
def test_the_oracle_reproduces_vanilla_with_fewer_nfe(shipped_model, shipped_vanilla, window, count):
    model, tokenizer = shipped_model
    prompts = prompts_for(tokenizer, count)
    settings = DecodeSettings(gen_length=window[0], block_length=window[1], batch_size=count)
    vanilla = shipped_vanilla(count, settings)
    oracle = decode(model, prompts, ExtremelyGreedy(), settings, MASK, EOS, references=vanilla.tokens)
    assert torch.equal(oracle.tokens, vanilla.tokens)
    assert (oracle.nfe <= vanilla.nfe).all() and oracle.nfe.sum() < vanilla.nfe.sum()


def test_eotp_keeps_the_text_before_the_first_end_of_text_under_the_oracle(shipped_model, shipped_vanilla):
    model, tokenizer = shipped_model
    prompts = prompts_for(tokenizer, 16)
    settings = DecodeSettings(gen_length=64, block_length=16, batch_size=16)  # the vanilla decode other tests share
    vanilla = shipped_vanilla(16, settings)
    cut = decode(model, prompts, ExtremelyGreedy(), dataclasses.replace(settings, eotp=True), MASK, EOS,
                 references=vanilla.tokens)
    for ref, out in zip(vanilla.tokens.tolist(), cut.tokens.tolist()):
        end = ref.index(EOS) if EOS in ref else len(ref)
        assert out[:end] == ref[:end]
        assert all(tok == EOS for tok in out[end:])
    assert cut.nfe.sum() < vanilla.nfe.sum()


def test_the_filled_learn2pd_eotp_cuts_earlier_and_the_oracle_stays_exact_under_it(shipped_model, shipped_vanilla):
    model, tokenizer = shipped_model
    prompts = prompts_for(tokenizer, 16)
    settings = DecodeSettings(gen_length=64, block_length=16, batch_size=16, eotp=True)
    learn2pd = settings.replace(eotp_rule="learn2pd_filled")
    vanilla = shipped_vanilla(16, settings.replace(eotp=False))
    oracle = decode(model, prompts, ExtremelyGreedy(), learn2pd, MASK, EOS, references=vanilla.tokens)
    for ref, out in zip(vanilla.tokens.tolist(), oracle.tokens.tolist()):
        end = ref.index(EOS) if EOS in ref else len(ref)
        assert out[:end] == ref[:end] and all(tok == EOS for tok in out[end:])
    committed = decode(model, prompts, Vanilla(), settings, MASK, EOS)
    predicted = decode(model, prompts, Vanilla(), learn2pd, MASK, EOS)
    assert predicted.nfe.sum() < committed.nfe.sum(), "cutting at a predicted end of text saves passes"
    texts = [[tok for tok in row[: row.index(EOS) if EOS in row else None]] for row in committed.tokens.tolist()]
    cut = [[tok for tok in row[: row.index(EOS) if EOS in row else None]] for row in predicted.tokens.tolist()]
    assert sum(a == b for a, b in zip(texts, cut)) >= 14, "the cut position itself ends the text (no run-on)"


def test_the_filled_learn2pd_eotp_cuts_after_the_most_confident_predicted_end_of_text(tokenizer):
    """A model sure of end-of-text at window position 5, less sure at 9: end-of-text from position 5 on."""
    prompts = prompts_for(tokenizer, 1)

    class EndsAtFive(torch.nn.Module):
        def forward(self, input_ids, **_):
            logits = torch.zeros(*input_ids.shape, 8)
            logits[..., 3] = 1.0
            for offset, value in ((5, 9.0), (9, 4.0)):
                if len(prompts[0]) + offset < input_ids.shape[1]:  # the sequence shrinks once it is cut
                    logits[:, len(prompts[0]) + offset, EOS] = value
            return type("Out", (), {"logits": logits})()

    settings = DecodeSettings(gen_length=32, block_length=8, eotp=True, eotp_rule="learn2pd_filled")
    out = decode(EndsAtFive(), prompts, Threshold(0.99), settings, MASK, EOS)
    window = out.tokens[0].tolist()
    assert window[5:] == [EOS] * 27 and EOS not in window[:5]


def test_eotp_under_a_micro_model_fills_the_rest_with_end_of_text(micro_model, tokenizer):
    """A model that always predicts end-of-text first: EoTP stops after one forward pass."""

    class EndsAtOnce(torch.nn.Module):
        def forward(self, input_ids, **_):
            logits = torch.zeros(*input_ids.shape, 8)
            logits[..., EOS] = 5.0
            return type("Out", (), {"logits": logits})()

    settings = DecodeSettings(gen_length=32, block_length=8, eotp=True)
    out = decode(EndsAtOnce(), prompts_for(tokenizer, 2), Vanilla(), settings, MASK, EOS)
    assert out.nfe.tolist() == [1, 1] and (out.tokens == EOS).all()


BAD_SETTINGS = [
    (dict(gen_length=30, block_length=8), "decode.block_length=8: must divide decode.gen_length=30"),
    (dict(gen_length=32, block_length=8, steps=6), "decode.steps=6: allowed: a positive multiple of the number of"),
    (dict(remasking="highest"), "decode.remasking=highest: allowed: low_confidence, random"),
    (dict(temperature=-1.0), "decode.temperature=-1.0"),
    (dict(policy="greedy"), "decode.policy=greedy: allowed: credit, egp, entropy_bounded, factor, filter"),
    (dict(policy="factor", factor_rule="fast"), "decode.factor_rule=fast: allowed: paper, reference"),
]


@pytest.mark.parametrize("overrides,message", BAD_SETTINGS)
def test_bad_settings_raise_before_decoding(micro_model, tokenizer, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        decode(micro_model, prompts_for(tokenizer, 1), Vanilla(), DecodeSettings(**overrides), MASK, EOS)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, None])
def test_thresholds_outside_the_unit_interval_are_refused(value):
    with pytest.raises(ValueError, match=r"decode\.threshold=.*: allowed: a number in \(0, 1\]"):
        Threshold(value)
    with pytest.raises(ValueError, match=r"decode\.threshold"):
        LearnedFilter(torch.nn.Identity(), threshold=value)


def test_the_policy_registry_the_settings_and_the_validated_features_agree():
    assert set(policy_classes()) == set(POLICY_PARAMETERS)
    assert tuple(FEATURES) == VALIDATED_FEATURES
    for name in POLICY_PARAMETERS:
        settings = DecodeSettings(policy=name)
        if name not in ("filter", "rl_filter"):
            assert build_policy(settings).name == name


def view_of(confidence: list[float]) -> StepView:
    scores = torch.tensor([confidence])
    masked = torch.ones_like(scores, dtype=torch.bool)
    return StepView(scores[..., None], torch.zeros_like(scores, dtype=torch.long), scores, scores, masked,
                    torch.ones(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), 0, 0, 0)


def test_the_eotp_rules_and_the_settings_agree():
    from pipeline.decoding.eotp import RULES
    from pipeline.decoding.settings import EOTP_RULES

    assert tuple(RULES) == EOTP_RULES


def test_the_threshold_keeps_confidences_equal_to_it_as_fast_dllm_does():
    commit, _ = Threshold(0.5).select(view_of([0.5, 0.25, 0.75, 0.4999]))
    assert commit.tolist() == [[True, False, True, False]]


def test_the_factor_rules_differ_only_when_just_the_last_ranked_token_fails():
    # f = 1: the k-th most confident passes if c_k >= 1 - 1/(k+1): 0.5, 0.667, 0.75, 0.8
    only_last_fails = [0.9, 0.8, 0.85, 0.1]
    assert Factor(1.0).select(view_of(only_last_fails))[0].tolist() == [[True, True, True, False]]
    assert Factor(1.0, "reference").select(view_of(only_last_fails))[0].tolist() == [[True, True, True, True]]
    two_fail = [0.9, 0.8, 0.2, 0.1]
    for rule in ("paper", "reference"):
        assert Factor(1.0, rule).select(view_of(two_fail))[0].tolist() == [[True, True, False, False]]
    assert top_k_mask(torch.tensor([[0.1, 0.9]]), torch.ones(1, 2, dtype=torch.bool), torch.tensor([1])).tolist() \
        == [[False, True]]


def test_empty_prompts_and_overlong_windows_are_refused(micro_model, tokenizer):
    settings = DecodeSettings(gen_length=32, block_length=8)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        decode(micro_model, [[2, 4], []], Vanilla(), settings, MASK, EOS)
    with pytest.raises(ValueError, match="exceeds the model's context of 40"):
        decode(micro_model, [[2, 4, 5, 6, 7, 8, 9, 10, 11]], Vanilla(), settings, MASK, EOS, max_context=40)


def test_the_oracle_without_references_is_refused(micro_model, tokenizer):
    with pytest.raises(ValueError, match="needs reference outputs"):
        decode(micro_model, prompts_for(tokenizer, 1), ExtremelyGreedy(), DecodeSettings(), MASK, EOS)


def test_cached_keys_and_values_reproduce_a_full_forward_pass(micro_model):
    ids = torch.randint(3, 20, (3, 24))
    mask = torch.ones(3, 24, dtype=torch.bool)
    mask[0, :5] = False
    full = micro_model(ids, attention_mask=mask, return_cache=True)
    block = micro_model(ids[:, 8:16], attention_mask=mask, past=full.cache, past_offset=8).logits
    assert torch.allclose(block, full.logits[:, 8:16], atol=1e-5)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_caches_are_exact_for_a_one_layer_model_and_complete_for_deeper_ones(micro_model, tokenizer, cache):
    """With one layer a cached key depends only on its own token, so nothing is ever stale: outputs must match."""
    torch.manual_seed(2)
    config = DiffusionLMConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)
    one_layer = DiffusionLM(config).eval()
    one_layer.lm_head.weight.data[MASK] = 0.0
    prompts = prompts_for(tokenizer, 5)
    settings = DecodeSettings(gen_length=32, block_length=8, batch_size=3, eotp=True)
    for policy in (Vanilla(), Threshold(0.2)):
        plain = decode(one_layer, prompts, policy, settings, MASK, EOS)
        cached = decode(one_layer, prompts, policy, dataclasses.replace(settings, cache=cache), MASK, EOS)
        assert torch.equal(plain.tokens, cached.tokens) and torch.equal(plain.nfe, cached.nfe)
    deep = decode(micro_model, prompts, Threshold(0.3), dataclasses.replace(settings, cache=cache), MASK, EOS)
    assert not (deep.tokens == MASK).any()


@pytest.mark.parametrize("cache,later_length", [("none", None), ("prefix", "to the end"), ("dual", 8)])
def test_cached_steps_run_shorter_sequences(micro_model, tokenizer, cache, later_length):
    """Without a cache every step runs prompt + window; with one, only a block's first step does, and the others
    run from the block on (prefix) or the block alone (dual)."""
    lengths: list[tuple[int, int]] = []  # (sequence length, where the cached part ends) of every forward pass
    hook = micro_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append((kwargs["input_ids"].shape[1] if "input_ids" in kwargs
                                                     else args[0].shape[1], kwargs.get("past_offset", 0))),
        with_kwargs=True)
    try:
        prompt = prompts_for(tokenizer, 1)
        out = decode(micro_model, prompt, Vanilla(), DecodeSettings(gen_length=32, block_length=8, cache=cache),
                     MASK, EOS)
    finally:
        hook.remove()
    full = len(prompt[0]) + 32
    assert len(lengths) == int(out.nfe[0]) == 32
    firsts = [lengths[i] for i in range(0, 32, 8)]
    others = [length for i, length in enumerate(lengths) if i % 8]
    assert all(length == full for length, _ in firsts)
    if later_length is None:
        assert all(length == full for length, _ in others)
    elif later_length == "to the end":
        assert all(length == full - offset and offset >= len(prompt[0]) for length, offset in others)
    else:
        assert all(length == later_length for length, _ in others)


def test_a_cache_on_a_model_without_support_is_refused(tokenizer):
    class Plain(torch.nn.Module):
        def forward(self, input_ids, **_):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 8)})()

    with pytest.raises(ValueError, match="decode.cache=dual: needs a model with block-cache support"):
        decode(Plain(), prompts_for(tokenizer, 1), Vanilla(), DecodeSettings(cache="dual"), MASK, EOS)


def test_entropy_is_finite_where_the_mask_token_is_impossible():
    """The loop sets the mask token's logit to -inf; entropy once gave 0 * -inf = NaN there."""
    logits = torch.tensor([[[2.0, 1.0, float("-inf"), 0.5]]])
    probs = torch.softmax(logits, -1)
    one = torch.ones(1, dtype=torch.long)
    view = StepView(logits, probs.argmax(-1), probs.max(-1).values, probs.max(-1).values,
                    torch.ones(1, 1, dtype=torch.bool), one, one - 1, 0, 0, 0)
    features = block_features(view, ("confidence", "entropy", "margin", "position", "step", "committed"), 4)
    assert torch.isfinite(features).all()
    finite = probs[probs > 0]
    assert torch.allclose(features[0, 0, 1], -(finite * finite.log()).sum())


def test_the_step_history_measures_how_predictions_move():
    history = StepHistory(2, 3, "cpu")
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]] * 2)
    rows = torch.tensor([0, 1])
    kl, unchanged = history.update(rows, logits, logits.argmax(-1))
    assert torch.isinf(kl).all() and unchanged.tolist() == [[0, 0, 0]] * 2
    moved = logits.clone()
    moved[1, 0] = torch.tensor([0.0, 2.0])
    kl, unchanged = history.update(rows, moved, moved.argmax(-1))
    assert torch.allclose(kl[0], torch.zeros(3)) and kl[1, 0] > 1 and torch.allclose(kl[1, 1:], torch.zeros(2))
    assert unchanged.tolist() == [[1, 1, 1], [0, 1, 1]]


def test_klass_commits_only_what_stayed_stable(shipped_model, shipped_vanilla):
    model, tokenizer = shipped_model
    prompts = prompts_for(tokenizer, 16)
    settings = DecodeSettings(gen_length=64, block_length=16, batch_size=16)
    first_steps = []

    def observe(view, commit):
        if view.step == 0:
            first_steps.append(commit.sum(-1))

    klass = decode(model, prompts, StableConfidence(0.9, 0.01), settings, MASK, EOS, observer=observe)
    vanilla = shipped_vanilla(16, settings)
    assert all((count == 1).all() for count in first_steps), "nothing is stable before a second look"
    assert klass.nfe.sum() < vanilla.nfe.sum()
    never = decode(model, prompts, StableConfidence(1.0, 1e-9), settings, MASK, EOS)
    assert torch.equal(never.tokens, vanilla.tokens)


def test_history_features_are_finite_and_bounded(shipped_model):
    model, tokenizer = shipped_model
    names = ("kl", "stability", "is_end", "distance_to_committed", "distance_to_end", "masked_run_before")
    seen = []
    decode(model, prompts_for(tokenizer, 8), Threshold(0.9), DecodeSettings(gen_length=64, block_length=16),
           MASK, EOS, observer=lambda view, commit: seen.append(block_features(view, names, 16)), track_history=True)
    values = torch.cat([f.reshape(-1, len(names)) for f in seen])
    assert torch.isfinite(values).all() and values.min() >= -1 and values.max() <= 1
    assert values[:, 2].max() == 1 and values[:, 1].max() > 0, "end-of-text and stable predictions occur"
    assert values[:, 5].min() == 0 and values[:, 5].max() > 0


def test_masked_run_before_counts_masks_back_to_the_committed_text():
    masked = torch.tensor([[False, True, True, False, True], [True, True, True, True, True]])
    view = StepView(torch.zeros(2, 5, 3), torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5), torch.zeros(2, 5),
                    masked, torch.ones(2, dtype=torch.long), torch.arange(2), 0, 0, 0)
    run = block_features(view, ("masked_run_before",), 5)[..., 0] * 5
    assert run.tolist() == [[0, 0, 1, 2, 0], [0, 1, 2, 3, 4]]


def test_the_learn2pd_eotp_rule_is_the_published_one(shipped_model, shipped_vanilla):
    """Token-identical to the re-statement on the shipped model, and unlike the repair: the position the cut
    keeps is decoded, not written as end-of-text."""
    model, tokenizer = shipped_model
    prompts = prompts_for(tokenizer, 12)
    settings = DecodeSettings(gen_length=64, block_length=16, batch_size=1, eotp=True, eotp_rule="learn2pd")
    ours = decode(model, prompts, Vanilla(), settings, MASK, EOS).tokens.tolist()
    restated = [references.learn2pd_generate(model, p, 64, 16, 64, MASK, EOS) for p in prompts]
    assert ours == restated
    filled = decode(model, prompts, Vanilla(), settings.replace(eotp_rule="learn2pd_filled"), MASK, EOS)
    assert filled.tokens.tolist() != ours, "the published rule and its repair decode differently here"
    # vanilla's decode of these 12 prompts: the first 12 of the 16 the KLASS and oracle tests decode
    vanilla = shipped_vanilla(16, DecodeSettings(gen_length=64, block_length=16, batch_size=16)).tokens[:12]
    oracle = decode(model, prompts, ExtremelyGreedy(), settings, MASK, EOS, references=vanilla)
    for ref, out in zip(vanilla.tolist(), oracle.tokens.tolist(), strict=True):
        end = ref.index(EOS) if EOS in ref else len(ref)
        assert out[:end] == ref[:end] and all(tok == EOS for tok in out[end:]), "the oracle stays exact"


DREAM_ALGS = {"maskgit_plus": "low_confidence", "topk_margin": "margin", "entropy": "entropy", "origin": "origin"}


def test_dream_s_samplers_are_the_published_ones(micro_model, tokenizer):
    """``decode.schedule=dream`` with a ``remasking`` score decodes as Dream's own sampler with that ``alg``, on a
    random model whose distributions make the three rankings disagree (sharpened, so that no two entropies tie
    exactly: the tie order of ``torch.topk`` is unspecified)."""

    class Sharpened(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            out = micro_model(input_ids, **kwargs)
            out.logits = out.logits * 8
            return out

    model = Sharpened()
    prompts = prompts_for(tokenizer, 6)
    decoded = {}
    for alg, remasking in DREAM_ALGS.items():
        settings = DecodeSettings(gen_length=24, block_length=24, batch_size=1, remasking=remasking, schedule="dream")
        ours = decode(model, prompts, Vanilla(), settings, MASK, EOS)
        decoded[alg] = ours.tokens.tolist()
        if alg == "origin":  # one generator per decode call: each prompt alone sees the re-statement's draws
            alone = [decode(model, [p], Vanilla(), settings, MASK, EOS).tokens[0].tolist() for p in prompts]
            seeded = [torch.Generator().manual_seed(0) for _ in prompts]
            assert alone == [references.dream_sample(model, p, 24, 24, MASK, alg, generator=g)
                             for p, g in zip(prompts, seeded)], alg
            assert max(ours.nfe.tolist()) <= 24, "a window filled early stops (Dream runs its idle steps anyway)"
            continue
        assert decoded[alg] == [references.dream_sample(model, p, 24, 24, MASK, alg) for p in prompts], alg
        assert ours.nfe.tolist() == [24] * 6, "one pass per step, the first committing nothing"
    assert decoded["maskgit_plus"] != decoded["topk_margin"] != decoded["entropy"] != decoded["maskgit_plus"]
    assert decoded["origin"] not in (decoded["maskgit_plus"], decoded["topk_margin"], decoded["entropy"])


def test_origin_commits_each_position_by_chance_on_dream_s_grid(micro_model, tokenizer):
    """Dream's ``origin``: a step's count is random (a position is committed with chance ``1 - s / t``), so counts
    vary from prompt to prompt and step to step, average what the grid expects, and the last step takes the rest."""
    prompts = prompts_for(tokenizer, 16)
    counts = []
    settings = DecodeSettings(gen_length=32, block_length=32, steps=8, batch_size=16, remasking="origin",
                              schedule="dream")
    decode(micro_model, prompts, Vanilla(), settings, MASK, EOS,
           observer=lambda view, commit: counts.append(commit.sum(-1).tolist()))
    counts = torch.tensor(counts, dtype=torch.float)  # [steps, prompts]
    assert counts.sum(0).tolist() == [32.0] * 16, "every position committed by the end"
    assert len(set(counts[1].tolist())) > 1, "the count is drawn, not scheduled"
    grid = torch.linspace(1, 1e-3, 9)
    expected, left = [], 32.0
    for i in range(7):
        expected.append(left * float(1 - grid[i + 1] / grid[i]))
        left -= expected[-1]
    assert counts.mean(1)[:7].tolist() == pytest.approx(expected, abs=2.5)


def test_ranking_precision_follows_the_references(micro_model, tokenizer):
    """``ranking_precision=model`` ranks by the softmax of the model's own logits over the whole vocabulary (LLaDA's
    ``generate``, bf16 on a GPU), ``float64`` as Fast-dLLM's ``get_transfer_index``: on a bf16 model the coarse
    softmax ties positions the float32 one orders, so decodes differ; in float32 all three agree here."""
    prompts = prompts_for(tokenizer, 8)
    settings = DecodeSettings(gen_length=32, block_length=8, batch_size=8)
    by = {p: decode(micro_model, prompts, Vanilla(), settings.replace(ranking_precision=p), MASK, EOS).tokens
          for p in ("float32", "model", "float64")}
    assert torch.equal(by["float32"], by["float64"]) and torch.equal(by["float32"], by["model"])
    half = copy.deepcopy(micro_model).to(torch.bfloat16)
    by = {p: decode(half, prompts, Vanilla(), settings.replace(ranking_precision=p), MASK, EOS).tokens
          for p in ("float32", "model")}
    assert not torch.equal(by["float32"], by["model"])
    with pytest.raises(Exception, match="decode.ranking_precision"):
        settings.replace(ranking_precision="bf16").validate()

