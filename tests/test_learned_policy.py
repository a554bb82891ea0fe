"""The stronger learned policy: on-policy (DAgger) rounds, training that fits the data, the validated threshold
stored with the filter, the trajectory stage's own timing, and the second embedded task."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from pipeline.filter_training import choose_threshold, metrics_at
from pipeline.tasks.chain import IteratedMap, step
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


def test_the_iterated_map_is_written_digit_by_digit_with_squares_or_cubes():
    task = IteratedMap(min_length=3, max_length=8)
    assert sorted(step(x, 0, power=3) for x in range(10)) == list(range(10)), "cubing keeps last digits distinct"
    assert task.solve(7, "314") == "259"  # 49 + 3 -> 2; 4 + 1 -> 5; 25 + 4 -> 9
    assert IteratedMap(power=3).solve(7, "314") == "677"  # 343 + 3 -> 6; 216 + 1 -> 7; 343 + 4 -> 7
    for example in task.examples("test", 20):
        start, digits = example.prompt.split(":")
        assert len(digits) == 8 + 1 and digits.endswith("=")  # a fixed-width field: digit k at a fixed offset
        field = digits[:-1].rstrip("-")
        assert example.answer == example.final == task.solve(int(start), field)
        assert task.score(example, example.answer + " ").exact_match
        assert not task.score(example, example.answer[:-1]).exact_match
    splits = {split: {e.prompt for e in task.examples(split, 200)} for split in ("train", "validation", "test")}
    assert not (splits["train"] & splits["test"]) and not (splits["validation"] & splits["test"])


def test_small_prompt_spaces_are_counted_exactly():
    task = IteratedMap(min_length=1, max_length=2)
    sizes = {split: task.split_size(split) for split in ("train", "validation", "test")}
    assert sum(sizes.values()) == 10 * (10 + 100)
    assert len(task.examples("test", sizes["test"])) == sizes["test"]
    rng = random.Random(0)
    assert len(task.sample(rng).answer) in (1, 2)


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
