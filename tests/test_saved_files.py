"""The one validation of saved files (models/saved_files.py): its torch-free tables agree with the networks they
describe, the loaders refuse what the pre-flight refuses in the same words, weights that cannot fit the device are
refused from their count before anything is allocated, and the settings later stages need are checked up front.
The command-line refusals themselves are rows of tests/test_bad_input.py."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import saved_files
from models.checkpoint import NATIVE, build_native, load_native
from models.dream import DreamConfig
from models.errors import ConfigError, InputError
from models.filter import BlockFilter, FilterConfig
from models.llada import LLaDAConfig
from models.saved_files import (
    FILTER_ARCHITECTURES,
    FILTER_DEFAULTS,
    NATIVE_TYPES,
    PLACEHOLDER_CHARACTERS,
    MismatchedFile,
    filter_tensor_shapes,
    native_tensor_shapes,
    parameter_count,
    weights_problem,
)
from models.tokenizer import build_placeholder_tokenizer
from pipeline.configuration.validation import check_filter_splits, check_lm_eval_split, validate
from pipeline.learning.trajectories import filter_split_of
from pipeline.tasks.lm_eval_task import LmEvalTask
from tests.standins import DREAM_OFFICIAL_CONFIG, LLADA_OFFICIAL_CONFIG, write_llada_official

GiB = 2**30
LLADA_SMALL = {"model_type": "llada", "d_model": 16, "n_heads": 4, "n_layers": 2, "vocab_size": 50,
               "max_sequence_length": 64, "mlp_hidden_size": 24, "block_type": "llama", "activation_type": "silu",
               "layer_norm_type": "rms", "rope": True, "weight_tying": False, "embedding_size": 50}
DREAM_SMALL = {"model_type": "Dream", "hidden_size": 16, "num_attention_heads": 4, "num_hidden_layers": 2,
               "intermediate_size": 24, "vocab_size": 50}


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


@pytest.mark.parametrize("fields", [
    {"block_length": 8}, {"block_length": 8, "num_layers": 1}, {"block_length": 4, "num_layers": 3, "hidden_size": 5,
                                                                 "features": ["confidence", "position"]},
    {"block_length": 8, "architecture": "transformer", "num_layers": 2, "features": ["confidence", "position"]},
    {"block_length": 8, "architecture": "transformer", "hidden_size": 12, "num_heads": 3, "num_layers": 1},
])
def test_the_filter_table_is_the_network_s_own(fields):
    filled = {**FILTER_DEFAULTS, **fields}
    assert filter_tensor_shapes(filled) == shapes(BlockFilter(FilterConfig(**fields)))


def test_the_filter_rules_know_every_field_and_default_of_the_filter():
    defaults = dataclasses.asdict(FilterConfig())
    assert {**defaults, "features": list(defaults["features"])} == FILTER_DEFAULTS
    assert FILTER_ARCHITECTURES == ("mlp", "transformer")


@pytest.mark.parametrize("config", [
    LLADA_SMALL, {**LLADA_SMALL, "weight_tying": True}, {**LLADA_SMALL, "n_kv_heads": 2, "include_qkv_bias": True},
    {**LLADA_SMALL, "mlp_hidden_size": None, "mlp_ratio": 3, "embedding_size": 64}, LLADA_OFFICIAL_CONFIG,
    DREAM_SMALL, {**DREAM_SMALL, "tie_word_embeddings": True}, {**DREAM_SMALL, "num_key_value_heads": 1},
    DREAM_OFFICIAL_CONFIG,
], ids=lambda c: f"{c['model_type']}-{len(c)}-{c.get('weight_tying', c.get('tie_word_embeddings', False))}")
def test_the_native_table_is_the_model_s_own_and_counts_its_parameters(config):
    saved_files.check_native_config(config)
    model = build_native(config, "config.json")
    assert native_tensor_shapes(config) == shapes(model)
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_the_native_types_and_the_placeholder_ids_are_the_classes_own():
    assert NATIVE_TYPES == tuple(NATIVE)
    build_placeholder_tokenizer(200, eos_id=PLACEHOLDER_CHARACTERS, mask_id=199)
    with pytest.raises(ValueError, match="special token ids"):
        build_placeholder_tokenizer(200, eos_id=PLACEHOLDER_CHARACTERS - 1, mask_id=199)


@pytest.mark.parametrize("change,message", [
    ({"n_layers": "two"}, 'config.json: n_layers="two": allowed: an integer >= 1'),
    ({"n_heads": 3}, "config.json: n_heads=3: allowed: a divisor of d_model (16)"),
    ({"n_heads": 16}, "config.json: n_heads=16: d_model / n_heads = 1, an odd head size"),
    ({"n_kv_heads": 3}, "config.json: n_kv_heads=3: allowed: a divisor of n_heads (4)"),
    ({"eos_token_id": 50}, "config.json: eos_token_id=50: allowed: a token id from 0 to vocab_size - 1 (49)"),
    ({"embedding_size": 40}, "config.json: embedding_size=40: allowed: at least vocab_size (50)"),
    ({"weight_tying": "yes"}, 'config.json: weight_tying="yes": allowed: true or false'),
])
def test_the_llada_class_refuses_what_the_pre_flight_refuses(change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LLaDAConfig.from_dict({**LLADA_SMALL, **change})


@pytest.mark.parametrize("field,default", [("block_type", "sequential"), ("activation_type", "swiglu"),
                                           ("layer_norm_type", "default"), ("rope", False)])
def test_a_llada_field_left_out_is_the_official_default_and_refused_in_one_line(field, default):
    """LLaDA's configuration_llada.py fills a field config.json leaves out; read any other way, the model would be
    a different network than the official code builds from the same files."""
    config = {k: v for k, v in LLADA_SMALL.items() if k != field}
    message = f"{field}={json.dumps(default)}: allowed:"
    with pytest.raises(saved_files.FieldError, match=message) as refused:
        saved_files.check_native_config(config)
    assert "absent from config.json" in str(refused.value)
    with pytest.raises(ValueError, match="absent from config.json"):
        LLaDAConfig.from_dict(config)


def test_a_llada_config_without_weight_tying_or_embedding_size_reads_them_as_the_official_code():
    """Tied output weights and 50,304 embedding rows are the official defaults: the tied model has no separate
    output table, and a vocabulary above 50,304 without an embedding_size is refused, as the official code would
    fail on it."""
    untied = {k: v for k, v in LLADA_SMALL.items() if k != "weight_tying"}
    assert LLaDAConfig.from_dict(untied).weight_tying
    assert "model.transformer.ff_out.weight" not in native_tensor_shapes(untied)
    sized = {k: v for k, v in LLADA_SMALL.items() if k != "embedding_size"}
    assert native_tensor_shapes(sized)["model.transformer.wte.weight"] == (50304, 16)
    with pytest.raises(saved_files.FieldError, match="embedding_size=50304: allowed: at least vocab_size"):
        saved_files.check_native_config({**sized, "vocab_size": 60000})



@pytest.mark.parametrize("change,message", [
    ({"num_hidden_layers": "two"}, 'Dream config: num_hidden_layers="two": allowed: an integer >= 1'),
    ({"num_attention_heads": 0}, "Dream config: num_attention_heads=0: allowed: an integer >= 1"),
    ({"num_key_value_heads": 3}, "Dream config: num_key_value_heads=3: allowed: a divisor of num_attention_heads"),
    ({"mask_token_id": 151666}, "Dream config: mask_token_id=151666: allowed: a token id from 0 to vocab_size - 1"),
    ({"rope_scaling": "yarn"}, 'Dream config: rope_scaling="yarn": allowed: null or'),
])
def test_the_dream_class_refuses_what_the_pre_flight_refuses(change, message):
    with pytest.raises(ValueError, match=message):
        DreamConfig.from_dict({**DREAM_SMALL, **change})


def test_the_filter_loader_refuses_a_stored_field_against_its_file(tmp_path):
    """What the stages and lm-eval load a saved filter (or policy) through: the file and field named, never the
    user's decode.threshold."""
    folder = tmp_path / "policy"
    BlockFilter(FilterConfig(block_length=8)).save(folder)
    saved = json.loads((folder / "filter.json").read_text())
    (folder / "filter.json").write_text(json.dumps({**saved, "threshold": 7.5}))
    with pytest.raises(InputError, match=rf"^{folder}/filter.json: threshold=7.5: allowed: a number in \(0, 1\]"):
        BlockFilter.load(folder)
    (folder / "filter.json").write_text(json.dumps({**saved, "architecture": "transformer", "num_heads": 0}))
    with pytest.raises(InputError, match="filter.json: num_heads=0: allowed: an integer >= 1"):
        BlockFilter.load(folder)
    (folder / "filter.json").write_text(json.dumps({**saved, "threshold": 0.5}))
    assert BlockFilter.load(folder).config.threshold == 0.5


def test_a_filter_description_out_of_range_is_a_value_error_naming_the_field():
    with pytest.raises(ValueError, match="num_heads=5: allowed: a divisor of the hidden size"):
        FilterConfig(block_length=8, architecture="transformer", num_heads=5)
    with pytest.raises(ValueError, match='features=\\["colour"\\]: allowed: a non-empty list of confidence'):
        FilterConfig(block_length=8, features=("colour",))


def test_an_extra_tensor_in_a_shard_is_named_with_its_file_by_the_loader(tmp_path):
    folder = write_llada_official(tmp_path / "llada", shards=2)
    shard = folder / "model-00002-of-00002.safetensors"
    tensors = load_file(shard)
    save_file({**tensors, "stray": torch.zeros(2)}, shard, metadata={"format": "pt"})
    with pytest.raises(MismatchedFile, match=rf"^{shard}: unexpected tensor 'stray' \(not in the index; 1 such\)"):
        load_native(folder, torch.float32, torch.device("cpu"))


@pytest.fixture
def memory(monkeypatch):
    """This machine seen as one with 23 GiB of memory and no GPU."""
    monkeypatch.setattr(saved_files, "machine_memory", lambda: 23 * GiB)
    monkeypatch.setattr(saved_files, "gpu_memories", lambda: None)


@pytest.mark.parametrize("preset,field", [("llada_random", "n_layers=32"), ("dream_random", "num_hidden_layers=28")])
def test_a_released_size_on_a_small_cpu_is_refused_from_its_count_instantly(compose_cfg, memory, preset, field):
    cfg = compose_cfg([f"model={preset}", "stage=evaluate"])
    began = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^model.architecture.{field}: about 2\d\.\d GiB of weights in float32 "
                                          r"\(\d\.\dB parameters\); this machine has 23.0 GiB of memory; allowed: "):
        validate(cfg)
    assert time.monotonic() - began < 1, "counted, not allocated"
    assert validate(compose_cfg([f"model={preset}", "stage=evaluate", "model.dtype=bfloat16"])) == ["evaluate"]


def test_weights_bound_elsewhere_are_checked_where_they_load(compose_cfg, memory):
    cfg = compose_cfg(["model=llada_random", "stage=evaluate", "device=cuda"])
    assert validate(cfg) == ["evaluate"], "no GPU to be seen here: checked by the job that has one"
    assert weights_problem(8 * 10**9, "float32", "auto").startswith("about 29.8 GiB of weights in float32 (8.0B "
                                                                    "parameters); this machine has 23.0 GiB")


def test_a_gpu_s_memory_is_read_through_its_visible_index(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '81559\\n143771\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert saved_files.gpu_memories() == [143771 * 2**20, 81559 * 2**20]
    assert weights_problem(8 * 10**9, "auto", "cuda") is None, "bfloat16 on a GPU of 140 GiB"
    assert weights_problem(8 * 10**11, "auto", "cuda:1") == (
        "about 1.5 TiB of weights in bfloat16 (800.0B parameters); cuda:1 has 79.6 GiB; allowed: weights within "
        "90% of it (smaller sizes, model.dtype=bfloat16, or a device with more memory)")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5d1c")
    assert weights_problem(8 * 10**11, "auto", "cuda") is None, "a GPU named by UUID: told where it loads"


def test_the_filter_split_is_80_10_10_by_prompt_and_checked_before_any_trajectory():
    shares = Counter(filter_split_of(prompt, 0) for prompt in range(10_000))
    assert 7_800 < shares["train"] < 8_200 and 900 < shares["val"] < 1_100 and 900 < shares["test"] < 1_100
    assert [filter_split_of(prompt, 7) for prompt in range(20)] == [filter_split_of(prompt, 7) for prompt in range(20)]
    with pytest.raises(ConfigError, match=r"^trajectories.num_prompts=3: too few prompts for train_filter"):
        check_filter_splits(3, 0)
    check_filter_splits(100, 0)


def test_an_lm_eval_task_s_splits_are_read_from_its_yaml():
    gsm8k = LmEvalTask("gsm8k")
    check_lm_eval_split(gsm8k, "train", "train_policy.split")
    check_lm_eval_split(gsm8k, "test", "eval.split")
    with pytest.raises(ConfigError, match="^train_policy.split=validation: lm-eval's gsm8k has no validation split; "
                                          "allowed: train, test$"):
        check_lm_eval_split(gsm8k, "validation", "train_policy.split")
    check_lm_eval_split(LmEvalTask("no_such_task_anywhere"), "validation", "sweep.split")  # lm-eval names it at load


def test_the_checks_import_no_torch():
    import subprocess
    import sys

    code = "import sys, pipeline.configuration.validation, models.saved_files; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
