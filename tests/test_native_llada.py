"""The native LLaDA (models/llada.py) on tiny checkpoints in the official layout: loading by the official names
from shards, one-line errors for a checkpoint that does not fit, batched = unbatched, and the loop's caches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import load_native
from models.llada import LLaDAConfig, LLaDAModel
from tests.standins import LLADA_IDS, write_llada_official
from tests.test_cli import run_cli

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    return write_llada_official(tmp_path_factory.mktemp("llada") / "official", shards=3)


def test_the_parameters_carry_the_official_names():
    model = LLaDAModel(LLaDAConfig.from_dict({"model_type": "llada", "d_model": 8, "n_heads": 2, "n_layers": 1,
                                              "vocab_size": 10, "max_sequence_length": 32, "mlp_hidden_size": 12,
                                              "block_type": "llama", "activation_type": "silu", "rope": True,
                                              "layer_norm_type": "rms", "weight_tying": False, "embedding_size": 10}))
    block = [f"model.transformer.blocks.0.{name}.weight" for name in
             ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out")]
    assert sorted(model.state_dict()) == sorted(["model.transformer.wte.weight", "model.transformer.ln_f.weight",
                                                 "model.transformer.ff_out.weight", *block])


def test_a_sharded_official_checkpoint_loads_in_the_dtype_asked_for(official):
    index = json.loads((official / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    model = load_native(official, torch.bfloat16, CPU)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.equal(model.model.transformer.wte.weight.float(),
                       load_file(official / index["weight_map"]["model.transformer.wte.weight"])
                       ["model.transformer.wte.weight"].to(torch.bfloat16).float())


def damaged_copy(official: Path, target: Path, change) -> Path:
    shutil.copytree(official, target)
    index = json.loads((target / "model.safetensors.index.json").read_text())
    file = target / index["weight_map"]["model.transformer.blocks.0.q_proj.weight"]
    tensors = load_file(file)
    change(tensors, index)
    save_file(tensors, file)
    (target / "model.safetensors.index.json").write_text(json.dumps(index))
    return target


def drop(tensors, index):
    del tensors["model.transformer.blocks.0.q_proj.weight"]
    del index["weight_map"]["model.transformer.blocks.0.q_proj.weight"]


def misshape(tensors, index):
    tensors["model.transformer.blocks.0.q_proj.weight"] = torch.zeros(3, 3)


def add(tensors, index):
    tensors["model.transformer.blocks.0.q_norm.weight"] = torch.ones(16)
    index["weight_map"]["model.transformer.blocks.0.q_norm.weight"] = index["weight_map"][
        "model.transformer.blocks.0.q_proj.weight"]


@pytest.mark.parametrize("change,message", [
    (drop, "the checkpoint has no tensor 'model.transformer.blocks.0.q_proj.weight'"),
    (misshape, "tensor 'model.transformer.blocks.0.q_proj.weight' has shape [3, 3], the model's config gives"),
    (add, "unexpected tensor 'model.transformer.blocks.0.q_norm.weight'"),
])
def test_a_checkpoint_that_does_not_fit_is_one_line_naming_the_tensor(official, tmp_path, change, message):
    folder = damaged_copy(official, tmp_path / "damaged", change)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_native(folder, torch.float32, CPU)
    result = run_cli("stage=evaluate", "model=llada_8b_instruct", f"model.path={folder}", "eval.num_prompts=1",
                     f"output_dir={tmp_path / 'out'}", "progress=false")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting,value,message", [
    ("model_type", "llama", "model_type='llama' has no native implementation"),
    ("block_type", "sequential", "block_type='sequential' is not supported by the native LLaDA implementation"),
])
def test_an_unknown_architecture_is_refused_by_name(official, tmp_path, setting, value, message):
    folder = tmp_path / "other"
    shutil.copytree(official, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, setting: value}))
    with pytest.raises(ValueError, match=message):
        load_native(folder, torch.float32, CPU)


def test_a_left_padded_batch_gives_each_prompt_its_own_logits(official):
    model = load_native(official, torch.float32, CPU)
    ids = torch.randint(0, 256, (2, 12))
    alone = model(ids).logits
    padded = torch.cat([torch.full((2, 4), LLADA_IDS["eos"]), ids], dim=1)
    mask = torch.ones_like(padded)
    mask[:, :4] = 0
    assert torch.allclose(model(padded, attention_mask=mask).logits[:, 4:], alone, atol=1e-5)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_block_logits_equal_a_full_pass_on_the_same_sequence(official, cache):
    model = load_native(official, torch.float32, CPU)
    ids = torch.randint(0, 256, (2, 24))
    mask = torch.ones_like(ids)
    full = model(ids, attention_mask=mask, return_cache=True)
    start, width = 8, 8
    stop = ids.shape[1] if cache == "prefix" else start + width
    part = model(ids[:, start:stop], attention_mask=mask, past=full.cache, past_offset=start).logits
    assert torch.allclose(part, full.logits[:, start:stop], atol=1e-5)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_the_decoding_loop_runs_the_native_model_with_each_cache(official, tmp_path, cache):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                               for i in range(6)))
    result = run_cli("stage=evaluate", "model=llada_8b_instruct", f"model.path={official}", "task=jsonl",
                     f"task.path={prompts}", "task.chat_template=true", "eval.num_prompts=6", "decode=threshold",
                     "decode.eotp=true", "decode.gen_length=16", "decode.block_length=8", f"decode.cache={cache}",
                     f"output_dir={tmp_path / 'out'}", "progress=false", "logger=none")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stdout and "ignores the attention mask" not in result.stderr


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache,later_length", [("none", None), ("prefix", "to the end"), ("dual", 8)])
def test_cached_steps_run_shorter_sequences_on_the_native_models(tmp_path, family, cache, later_length):
    """As for the embedded model: only a block's first step runs prompt + window; the others run from the block on
    (prefix) or the block alone (dual)."""
    from pipeline.decoding.loop import decode
    from pipeline.decoding.policies import Vanilla
    from pipeline.decoding.settings import DecodeSettings
    from tests.standins import DREAM_IDS, write_dream_official

    writer, ids = (write_llada_official, LLADA_IDS) if family == "llada" else (write_dream_official, DREAM_IDS)
    model = load_native(writer(tmp_path / family), torch.float32, CPU)
    lengths: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append((kwargs["input_ids"].shape[1] if "input_ids" in kwargs
                                                     else args[0].shape[1], kwargs.get("past_offset", 0))),
        with_kwargs=True)
    prompt = [[40, 41, 42, 43, 44, 45]]
    try:
        out = decode(model, prompt, Vanilla(), DecodeSettings(gen_length=32, block_length=8, cache=cache),
                     ids["mask"], ids["eos"])
    finally:
        hook.remove()
    full = len(prompt[0]) + 32
    assert len(lengths) == int(out.nfe[0]) == 32
    assert all(lengths[i][0] == full for i in range(0, 32, 8))
    others = [length for i, length in enumerate(lengths) if i % 8]
    if later_length is None:
        assert all(length == full for length, _ in others)
    elif later_length == "to the end":
        assert all(length == full - offset and offset >= len(prompt[0]) for length, offset in others)
    else:
        assert all(length == later_length for length, _ in others)
