"""Fidelity: the project's one decoding loop is token-identical to each published reference decoder.

Each reference is re-stated plainly in ``tests/fidelity_references.py`` (one prompt, no padding). Every case decodes
its prompts alone (``batch_size=1``) and as one left-padded batch of prompts of several lengths, in float32 and
bfloat16 on the CPU, and compares prompt by prompt with the re-statement run on that prompt alone: the loop's
batching, padding and dtype handling must not change a single token.

The native LLaDA and Dream here are the official architectures (``models/llada.py``, ``models/dream.py``) at the
stand-ins' sizes but with a 300-token vocabulary: the stand-ins' real vocabularies (126k, 152k) make a bf16 forward
and a float64 softmax cost ~0.1 s a step on the CPU, too slow for a suite of this size. Their heads are prepared as
``tests/standins.py`` prepares the official stand-ins' (scaled up, the mask token's row zeroed).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from models.filter import BlockFilter, FilterConfig
from pipeline.decoding.loop import decode
from pipeline.decoding.policies import LearnedFilter, Threshold, Vanilla
from pipeline.decoding.settings import DecodeSettings
from pipeline.decoding.step import Policy
from pipeline.tasks import ChainedAddition
from pipeline.tasks.prompts import encode_prompt
from tests import fidelity_references as ref
from tests.standins import DREAM_OFFICIAL_CONFIG, LLADA_OFFICIAL_CONFIG

GEN, BLOCK = 32, 8
FILTER_THRESHOLD = 0.6
SMALL = {"vocab_size": 300, "mask_token_id": 290, "eos_token_id": 291, "pad_token_id": 291}
NATIVE_PROMPTS = [[40, 41, 42, 43, 44], [50, 51, 52], [60, 61, 62, 63, 64, 65, 66, 67], [70, 71, 72],
                  [80, 81, 82, 83, 84, 85, 86, 87], [90, 91, 92, 93, 94]]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Family:
    """A model in float32 and bfloat16, its prompts and token ids."""

    models: dict[str, torch.nn.Module]
    prompts: list[list[int]]
    mask_id: int
    eos_id: int
    extra: dict = field(default_factory=dict)


def _prepare_head(weight: torch.Tensor, mask_id: int) -> None:
    """As the official stand-ins: sharpen the random head (a trained model's logit range) and make the mask token
    a zero logit, never the argmax."""
    with torch.no_grad():
        weight.mul_(30.0)
        weight[mask_id] = 0.0


def _both_dtypes(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    model = model.eval()
    return {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}


@pytest.fixture(scope="module")
def families(shipped_model) -> dict[str, Family]:
    from models.dream import DreamConfig, DreamModel
    from models.llada import LLaDAConfig, LLaDAModel

    torch.manual_seed(0)
    llada = LLaDAModel(LLaDAConfig.from_dict({**LLADA_OFFICIAL_CONFIG, **SMALL, "embedding_size": 300}))
    _prepare_head(llada.model.transformer.ff_out.weight, SMALL["mask_token_id"])
    torch.manual_seed(0)
    dream = DreamModel(DreamConfig.from_dict({**DREAM_OFFICIAL_CONFIG, **SMALL, "bos_token_id": 292}))
    _prepare_head(dream.lm_head.weight, SMALL["mask_token_id"])
    shipped, tokenizer = shipped_model
    examples = ChainedAddition().examples("test", 6)
    prompts = [p[2 * (i % 3):] for i, p in enumerate(encode_prompt(tokenizer, ex) for ex in examples)]
    network = neighbour_filter()
    ids = (SMALL["mask_token_id"], SMALL["eos_token_id"])
    return {
        "llada": Family(_both_dtypes(llada), NATIVE_PROMPTS, *ids),
        "dream": Family(_both_dtypes(dream), NATIVE_PROMPTS, *ids),
        "shipped": Family(_both_dtypes(shipped), prompts, tokenizer.mask_token_id, tokenizer.eos_token_id,
                          {"filter": network}),
    }


def neighbour_filter() -> BlockFilter:
    """Learn2PD's filter shape (Linear, ReLU, Linear over the block's confidences) with weights that make every
    position's decision read the whole block: logit_i = 4 (mean c - 0.9) + 6 (c_i - 0.9). A block cut short lowers
    the mean by its zero padding, so the padding decides acceptances (a random filter sits near 0.5 everywhere)."""
    network = BlockFilter(FilterConfig(block_length=BLOCK, features=("confidence",))).eval()
    first, second = network.net[0], network.net[2]
    with torch.no_grad():
        first.weight.copy_(torch.eye(BLOCK))
        first.bias.zero_()
        second.weight.copy_(torch.full((BLOCK, BLOCK), 4.0 / BLOCK) + 6.0 * torch.eye(BLOCK))
        second.bias.fill_(-(4.0 + 6.0) * 0.9)
    return network


Reference = Callable[[torch.nn.Module, list[int], Family], list[int]]


@dataclass
class Case:
    family: str
    settings: dict
    policy: Callable[[Family], Policy]
    reference: Reference


def _vanilla(family: Family) -> Policy:
    return Vanilla()


def _filter(family: Family) -> Policy:
    return LearnedFilter(family.extra["filter"], ("confidence",), FILTER_THRESHOLD, GEN // (GEN // BLOCK))


def _threshold(value: float) -> Callable[[Family], Policy]:
    return lambda family: Threshold(value)


AS_LLADA = {"ranking_precision": "model", "mask_token": "included"}
AS_FAST = {"ranking_precision": "float64", "mask_token": "included"}
EOTP = {"eotp": True, "eotp_rule": "learn2pd"}


def _fast(threshold: float | None, cache: str) -> Reference:
    return lambda model, prompt, f: ref.fast_dllm_generate(model, prompt, GEN, BLOCK, GEN, f.mask_id, threshold,
                                                           cache)


def _dream(alg: str) -> Reference:
    return lambda model, prompt, f: ref.dream_sample(model, prompt, GEN, GEN, f.mask_id, alg)


CASES = {
    "llada_generate[embedded]": Case("shipped", AS_LLADA, _vanilla,
                                     lambda m, p, f: ref.llada_generate(m, p, GEN, BLOCK, GEN, f.mask_id)),
    "llada_generate[native]": Case("llada", AS_LLADA, _vanilla,
                                   lambda m, p, f: ref.llada_generate(m, p, GEN, BLOCK, GEN, f.mask_id)),
    **{f"fast_dllm[threshold,{cache}]": Case("llada", {**AS_FAST, "cache": cache, "threshold": 0.7},
                                             _threshold(0.7), _fast(0.7, cache))
       for cache in ("none", "prefix", "dual")},
    **{f"fast_dllm[schedule,{cache}]": Case("llada", {**AS_FAST, "cache": cache}, _vanilla, _fast(None, cache))
       for cache in ("none", "prefix", "dual")},
    **{f"dream[{alg}]": Case("dream", {**AS_LLADA, "schedule": "dream", "remasking": remasking, "block_length": GEN},
                             _vanilla, _dream(alg))
       for alg, remasking in (("maskgit_plus", "low_confidence"), ("topk_margin", "margin"), ("entropy", "entropy"))},
    "learn2pd[predict_eot]": Case("shipped", {**AS_LLADA, **EOTP}, _vanilla,
                                  lambda m, p, f: ref.learn2pd_generate(m, p, GEN, BLOCK, GEN, f.mask_id, f.eos_id)),
    "learn2pd[l2p_eot]": Case("shipped", {**AS_LLADA, **EOTP}, _filter,
                              lambda m, p, f: ref.learn2pd_generate(m, p, GEN, BLOCK, GEN, f.mask_id, f.eos_id,
                                                                    f.extra["filter"], FILTER_THRESHOLD)),
    "learn2pd[prefix_cache]": Case("shipped", {**AS_FAST, **EOTP, "cache": "prefix"}, _filter,
                                   lambda m, p, f: ref.learn2pd_prefix_cache(m, p, GEN, BLOCK, GEN, f.mask_id,
                                                                             f.eos_id, f.extra["filter"],
                                                                             FILTER_THRESHOLD)),
}


def differences(ours: list[list[int]], expected: list[list[int]], prompts: list[list[int]], how: str,
                block_length: int) -> list[str]:
    """One line per prompt that differs: where first, and both windows."""
    lines = []
    for i, (a, b) in enumerate(zip(ours, expected)):
        j = ref.first_difference(a, b)
        if j is not None:
            lines.append(f"{how}: prompt {i} (length {len(prompts[i])}) first differs at window position {j} "
                         f"(block {j // block_length}): loop {a[j]} vs reference {b[j]}\n  loop      {a}\n"
                         f"  reference {b}")
    return lines


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_the_loop_is_token_identical_to_the_reference(families, name, dtype):
    """Alone and in one left-padded batch, every prompt decodes to what the reference gives it alone."""
    case = CASES[name]
    family = families[case.family]
    model, prompts = family.models[dtype], family.prompts
    assert len({len(p) for p in prompts}) >= 3, "prompts of three lengths or more exercise the padding"
    settings = DecodeSettings(**{"gen_length": GEN, "block_length": BLOCK, "steps": GEN, **case.settings})
    expected = [case.reference(model, prompt, family) for prompt in prompts]
    problems = []
    for how, batch_size in (("alone", 1), ("batched", len(prompts))):
        out = decode(model, prompts, case.policy(family), settings.replace(batch_size=batch_size), family.mask_id,
                     family.eos_id)
        problems += differences(out.tokens.tolist(), expected, prompts, f"{name} {dtype} {how}",
                                settings.block_length)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dream_origin_is_the_published_sampler(families, dtype):
    """``origin`` draws random numbers: each prompt decoded in its own call sees the re-statement's draws (a batch
    draws for all its rows at once, so only the law, not the numbers, is shared with a lone prompt)."""
    family = families["dream"]
    model = family.models[dtype]
    settings = DecodeSettings(gen_length=GEN, block_length=GEN, steps=GEN, batch_size=1, remasking="origin",
                              schedule="dream", **AS_LLADA)
    problems = []
    for i, prompt in enumerate(family.prompts):
        ours = decode(model, [prompt], Vanilla(), settings, family.mask_id, family.eos_id).tokens.tolist()
        generator = torch.Generator().manual_seed(settings.seed)
        expected = [ref.dream_sample(model, prompt, GEN, GEN, family.mask_id, "origin", generator=generator)]
        problems += [line.replace("prompt 0", f"prompt {i}")
                     for line in differences(ours, expected, [prompt], f"dream[origin] {dtype} alone", GEN)]
    assert not problems, "\n".join(problems)


def test_the_learn2pd_rule_refuses_the_dual_cache(families):
    """Learn2PD publishes EoTP with the prefix cache only; its dual-cache truncation is not re-stated here."""
    family = families["shipped"]
    settings = DecodeSettings(gen_length=GEN, block_length=BLOCK, cache="dual", **EOTP)
    with pytest.raises(ValueError, match="decode.cache"):
        decode(family.models["float32"], family.prompts[:1], Vanilla(), settings, family.mask_id, family.eos_id)


def test_a_bf16_sweep_s_samples_do_not_depend_on_its_batch_size(tmp_path):
    """Through the command line a user types: one setting swept in bf16 over prompts of three lengths (a
    ``task=jsonl`` file) at batch 1 and at batch 16 writes the same samples; only the batch size, and so the key,
    differs. (With the padded keys masked instead, one of the 48 differs.)"""
    import json

    from tests.test_cli import MICRO, run_cli

    prompts = tmp_path / "mixed.jsonl"
    examples = ChainedAddition().examples("test", 48)
    prompts.write_text("".join(json.dumps({"prompt": e.prompt[(i % 3) * 3 :], "answer": "0"}) + "\n"
                               for i, e in enumerate(examples)))
    grid = "sweep.grid=[{policy: threshold, threshold: [0.9]}]"
    samples = []
    for batch_size in (1, 16):
        out = tmp_path / f"batch{batch_size}"
        result = run_cli(MICRO, "task=jsonl", f"task.path={prompts}", "stage=sweep", "sweep.num_prompts=48",
                         "model.dtype=bfloat16", grid, f"decode.batch_size={batch_size}", f"output_dir={out}",
                         "logger=none", "progress=false")
        assert result.returncode == 0, result.stderr[-3000:]
        (written,) = out.glob("artifacts/sweep/*/samples.jsonl")
        samples.append([json.loads(line) for line in written.read_text().splitlines()])
    assert len(samples[0]) == 48 and len({len(s["prompt"]) for s in samples[0]}) == 3
    assert samples[0] == samples[1]
