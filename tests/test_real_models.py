"""The real-model path on CPU: tiny LLaDA- and Dream-like stand-ins in the hub's remote-code layout go through the
model presets, the family adapters, the chat template and the whole pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.families import FamilyAdapter, honours_attention_mask
from pipeline.tasks.base import Example
from pipeline.tasks.prompts import decode_answer, encode_prompt
from tests.standins import DREAM_IDS, LLADA_IDS, write_dream_like, write_llada_like
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("standins")
    return {"llada": write_llada_like(root / "llada"), "llada_ignoring": write_llada_like(root / "old", False),
            "dream": write_dream_like(root / "dream")}


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    rows = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(40)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def load(directory: Path):
    from transformers import AutoModel, AutoTokenizer

    return (AutoModel.from_pretrained(directory, trust_remote_code=True).eval(),
            AutoTokenizer.from_pretrained(directory, trust_remote_code=True))


def test_dream_logits_are_read_shifted_by_one(standins):
    model, _ = load(standins["dream"])
    ids = torch.randint(0, 200, (2, 12))
    raw = model(ids).logits
    shifted = FamilyAdapter(model, "dream")(ids).logits
    assert torch.equal(shifted[:, 0], raw[:, 0]) and torch.equal(shifted[:, 1:], raw[:, :-1])


@pytest.mark.parametrize("name,family,honours", [("llada", "llada", True), ("llada_ignoring", "llada", False),
                                                 ("dream", "dream", True)])
def test_a_model_that_ignores_the_attention_mask_is_found(standins, name, family, honours):
    model, tokenizer = load(standins[name])
    ids = DREAM_IDS if family == "dream" else LLADA_IDS
    probe = tokenizer("Is the attention mask honoured?", add_special_tokens=False)["input_ids"]
    assert honours_attention_mask(FamilyAdapter(model, family), probe, ids["eos"], ids["mask"]) is honours


def test_prompts_go_through_the_chat_template_and_end_of_turn_ends_the_answer(standins):
    _, tokenizer = load(standins["llada"])
    ids = encode_prompt(tokenizer, Example("Question: 2+2?\nAnswer:", "", ""), chat_template=True)
    text = tokenizer.decode(ids)
    assert "<|start_header_id|>user<|end_header_id|>" in text and text.endswith("assistant<|end_header_id|>\n\n")
    answer = tokenizer("4", add_special_tokens=False)["input_ids"]
    window = answer + [LLADA_IDS["eot"]] + tokenizer(" junk", add_special_tokens=False)["input_ids"]
    assert decode_answer(tokenizer, window, (LLADA_IDS["eos"], LLADA_IDS["eot"])) == "4"


REMOTE = ["model.implementation=remote", "model.trust_remote_code=true"]  # these stand-ins ship modeling code
SMALL = ["decode.gen_length=16", "decode.block_length=8", "eval.num_prompts=4", "progress=false", "logger=none"]


@pytest.mark.parametrize("preset,name", [("llada_8b_instruct", "llada"), ("llada_1_5_8b", "llada_ignoring"),
                                         ("dream_7b_instruct", "dream")])
def test_evaluate_runs_each_preset_on_its_stand_in(standins, prompts_file, tmp_path, preset, name):
    result = run_cli("stage=evaluate", f"model={preset}", f"model.path={standins[name]}", *REMOTE, "task=jsonl",
                     f"task.path={prompts_file}", "task.chat_template=true", "decode=threshold", "decode.eotp=true",
                     f"output_dir={tmp_path}", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stderr
    assert ("ignores the attention mask" in result.stderr) is (name == "llada_ignoring")


def test_too_few_trajectory_prompts_for_the_filter_s_splits_is_one_line(standins, prompts_file, tmp_path):
    result = run_cli("+experiment=micro", "stage=train_filter", "trajectories.num_prompts=3", f"output_dir={tmp_path}",
                     "logger=none", "progress=false")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: trajectories.num_prompts=3: too few prompts")


def test_missing_weights_name_the_path_and_how_to_provide_them(tmp_path):
    result = run_cli("stage=evaluate", "model=dream_7b_instruct", f"output_dir={tmp_path}", "progress=false")
    assert result.returncode == 2
    assert result.stderr.startswith("error: model.path=Dream-org/Dream-v0-Instruct-7B: not a local directory and "
                                    "not in the local hub cache; download it with `huggingface-cli download")


@pytest.mark.slow
@pytest.mark.parametrize("preset,name", [("llada_8b_instruct", "llada"), ("dream_7b_instruct", "dream")])
def test_the_whole_pipeline_runs_on_a_stand_in(standins, prompts_file, tmp_path, preset, name):
    own_prompts = ["+task@trajectories.task=jsonl", f"trajectories.task.path={prompts_file}"] if name == "dream" else []
    result = run_cli("+experiment=micro", f"model={preset}", f"model.path={standins[name]}", *REMOTE, "task=jsonl",
                     f"task.path={prompts_file}", "trajectories.num_prompts=12", "trajectories.batch_size=8",
                     *own_prompts, "sweep.num_prompts=2", "train_filter.max_epochs=20", "decode.gen_length=16",
                     f"output_dir={tmp_path}", "logger=none", "progress=false", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("| setting | accuracy |")
    assert "ignores the attention mask" not in result.stderr
    for stage in ("trajectories", "train_filter", "sweep", "aggregate"):
        assert list((tmp_path / "artifacts" / stage).glob("*/manifest.json")), stage
