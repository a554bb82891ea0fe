"""The stronger learned policy: on-policy (DAgger) rounds, training that fits the data, the validated threshold
stored with the filter, the trajectory stage's own timing, and the second embedded task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from pipeline.decoding.loop import decode
from pipeline.decoding.policies import ExtremelyGreedy, Vanilla
from pipeline.decoding.settings import DecodeSettings
from pipeline.learning.filter import choose_threshold, metrics_at
from pipeline.tasks.arith import ChainedAddition
from pipeline.tasks.chain import DigitSumChain, digit_sum
from pipeline.tasks.prompts import decode_answer, encode_prompt
from tests.test_cli import MICRO, run_cli


def test_the_chosen_threshold_is_the_lowest_that_reaches_the_target_precision():
    probs = torch.tensor([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([1, 1, 1, 0, 1, 0])
    chosen = choose_threshold(probs, labels, 0.75)  # top 5 hold 4 positives: 0.8 >= 0.75; top 6: 0.67 < 0.75
    assert chosen["threshold"] == pytest.approx(0.65) and chosen["precision"] == pytest.approx(0.8)
    assert chosen["recall"] == 1.0
    assert choose_threshold(probs, labels, 1.0)["threshold"] == pytest.approx(0.85)  # only the top 3 are all right
    assert metrics_at(probs, labels, 0.85) == {"precision": 1.0, "recall": 0.75, "accepted": 0.5}
    nothing = choose_threshold(torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.99)
    assert nothing == {"threshold": 1.0, "precision": 1.0, "recall": 0.0}


def test_the_chain_writes_totals_stepped_by_their_digit_sum():
    task, arith = DigitSumChain(max_steps=9), ChainedAddition()
    assert task.solve(37, 15, 3) == ("3:052,2:059,1:073#073", "073")  # 37+15; 52+(0+5+2); 59+(0+5+9)
    assert arith.solve(37, 15, 3)[1] == "082", "arith keeps its constant step"
    assert task.solve(99, 99, 9) == ("9:198,8:216,7:225,6:234,5:243,4:252,3:261,2:270,1:279#279", "279")
    for example in task.examples("test", 50):
        totals = [int(line.split(":")[1]) for line in example.answer.split("#")[0].split(",")]
        start, rest = example.prompt.rstrip("=").split("+")
        step, count = map(int, rest.split("*"))
        assert len(totals) == count and totals[0] == int(start) + step
        assert all(b == a + digit_sum(a) for a, b in zip(totals, totals[1:])), "no closed form"
        assert task.score(example, example.answer + " ").exact_match
        assert not task.score(example, example.answer[:-1]).exact_match
    splits = {split: {e.prompt for e in task.examples(split, 200)} for split in ("train", "validation", "test")}
    assert not (splits["train"] & splits["test"]) and not (splits["validation"] & splits["test"])
    assert task.split_size("test") >= 1000, "the frontier experiments decode 1,000 test prompts"
    assert task.examples("test", 8) != arith.examples("test", 8), "the two tasks draw their own streams"


def manifests(out: Path, stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in (out / "artifacts" / stage).glob("*/manifest.json")]


@pytest.mark.slow
def test_an_on_policy_round_decodes_with_the_previous_filter_and_trains_on_both_rounds(tmp_path):
    out = tmp_path / "out"
    result = run_cli(MICRO, f"output_dir={out}", "logger=none", "progress=false", "trajectories.on_policy_rounds=1",
                     "train_filter.class_balance=true", "train_filter.early_stopping_patience=1",
                     "train_filter.val_every_n_epochs=10", "sweep.grid=[{policy: filter, threshold: [null, 0.9]}]",
                     timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "on-policy round 1 of 1" in result.stderr
    filters = {m["key"]: m for m in manifests(out, "train_filter")}
    rounds = {m["settings"].get("on_policy_round", 0): m for m in manifests(out, "trajectories")}
    assert sorted(rounds) == [0, 1] and len(filters) == 2
    first = next(m for m in filters.values() if set(m["inputs"]) == {"trajectories"})
    final = next(m for m in filters.values() if "trajectories_round1" in m["inputs"])
    assert rounds[1]["inputs"] == {"filter": first["key"]}, "round 1 decodes with the round-0 filter"
    assert final["inputs"] == {"trajectories": rounds[0]["key"], "trajectories_round1": rounds[1]["key"]}
    assert final["figures"]["rounds"] == 2
    assert final["figures"]["rows_train"] > first["figures"]["rows_train"]
    # Positives are the majority, so balancing weighs them down; patience 1 stops before the 200 epochs.
    assert 0 < final["figures"]["pos_weight"] < 1 and final["figures"]["epochs"] < 200
    stored = json.loads((out / "artifacts" / "train_filter" / final["key"] / "filter" / "filter.json").read_text())
    assert stored["threshold"] == pytest.approx(final["figures"]["validated/threshold"])
    assert final["figures"]["validated/precision"] >= 0.99
    for m in rounds.values():
        f = m["figures"]
        assert 0 < f["forward_seconds"] <= f["seconds"] and f["minutes_per_1000_prompts"] > 0
    labels = {m["figures"]["label"] for m in manifests(out, "sweep")}
    assert labels == {"filter t=validated L=32", "filter t=0.9 L=32"}


def oracle_passes_and_accuracy(name: str, task, n: int = 32) -> tuple[float, float]:
    """Mean oracle forward passes per prompt at 64/16, and vanilla exact match, for a shipped model."""
    path = Path(__file__).parents[1] / "models" / "checkpoints" / name
    model, tokenizer = AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    examples = task.examples("test", n)
    prompts = [encode_prompt(tokenizer, ex) for ex in examples]
    settings = DecodeSettings(gen_length=64, block_length=16, batch_size=n)
    ids = model.config.mask_token_id, model.config.eos_token_id
    vanilla = decode(model, prompts, Vanilla(), settings, *ids)
    oracle = decode(model, prompts, ExtremelyGreedy(), settings, *ids, references=vanilla.tokens)
    assert torch.equal(oracle.tokens, vanilla.tokens)
    texts = [decode_answer(tokenizer, row.tolist()) for row in vanilla.tokens]
    accuracy = sum(s.exact_match for s in task.score_many(examples, texts)) / n
    return oracle.nfe.float().mean().item(), accuracy


def test_the_shipped_chain_model_solves_its_task_and_needs_more_passes_than_arith():
    chain_passes, chain_accuracy = oracle_passes_and_accuracy("tiny-chain", DigitSumChain(max_steps=9))
    arith_passes, arith_accuracy = oracle_passes_and_accuracy("tiny-arith", ChainedAddition())
    assert chain_accuracy >= 0.7 and arith_accuracy >= 0.8
    assert arith_passes < 4.8, "about one pass per block of 16 on arith"
    assert chain_passes > arith_passes + 1, "the chain's totals depend on each other"
