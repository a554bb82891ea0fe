"""The real architectures with random weights (``model=llada_random``, ``model=dream_random``): built by the native
classes from the official config fields, any size overridable, timed by the benchmark with nothing downloaded."""

from __future__ import annotations

import json

import pytest
import torch

from models.checkpoint import random_native
from models.dream import DreamConfig, DreamModel
from models.llada import LLaDAConfig, LLaDAModel
from models.tokenizer import build_placeholder_tokenizer
from pipeline.configuration.command import expand_grid
from pipeline.configuration.validation import validate
from tests.standins import DREAM_OFFICIAL_CONFIG, LLADA_OFFICIAL_CONFIG
from tests.test_cli import run_cli

CPU = torch.device("cpu")
SMALL = {"llada": ["model.architecture.d_model=32", "model.architecture.n_heads=2", "model.architecture.n_kv_heads=2",
                   "model.architecture.n_layers=2", "model.architecture.mlp_hidden_size=64"],
         "dream": ["model.architecture.hidden_size=32", "model.architecture.num_attention_heads=2",
                   "model.architecture.num_key_value_heads=1", "model.architecture.num_hidden_layers=2",
                   "model.architecture.intermediate_size=64"]}


@pytest.mark.parametrize(("preset", "sizes"), [("llada_random", {"d_model": 4096, "n_layers": 32, "n_heads": 32}),
                                               ("dream_random", {"hidden_size": 3584, "num_hidden_layers": 28,
                                                                 "num_key_value_heads": 4})])
def test_the_presets_hold_the_released_sizes_and_validate_without_weights(compose_cfg, preset, sizes, monkeypatch):
    monkeypatch.setattr("models.saved_files.machine_memory", lambda: 64 * 2**30)  # the weights fit: 8B in float32
    cfg = compose_cfg([f"model={preset}", "stage=evaluate"])
    assert cfg.model.path is None and cfg.model.random_weights
    assert {k: cfg.model.architecture[k] for k in sizes} == sizes
    assert validate(cfg) == ["evaluate"]


@pytest.mark.parametrize(("config", "model_class", "config_class"), [
    (LLADA_OFFICIAL_CONFIG, LLaDAModel, LLaDAConfig), (DREAM_OFFICIAL_CONFIG, DreamModel, DreamConfig)])
def test_random_weights_have_the_checkpoint_s_names_and_shapes_and_are_reproducible(config, model_class, config_class):
    model = random_native(config, torch.bfloat16, CPU)
    reference = model_class(config_class.from_dict(config))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in model.parameters())
    again = random_native(config, torch.bfloat16, CPU)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    norms = [p for name, p in model.named_parameters() if "norm" in name]
    assert norms and all(bool((p == 1).all()) for p in norms)
    matrix = next(p for p in model.parameters() if p.ndim == 2).detach().float()
    assert 0.015 < float(matrix.std()) < 0.025 and torch.isfinite(matrix).all()
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.isfinite(model.float()(ids).logits).all()


def test_the_placeholder_tokenizer_encodes_any_prompt_and_decodes_any_id():
    tokenizer = build_placeholder_tokenizer(1000, eos_id=990, mask_id=999, end_of_turn_ids=[995])
    ids = tokenizer("Q: 12 + 3?\nA:", add_special_tokens=False)["input_ids"]
    assert max(ids) < 100 and tokenizer.decode(ids) == "Q: 12 + 3?\nA:"
    assert tokenizer.decode([*ids, 500, 990, 995], skip_special_tokens=True) == "Q: 12 + 3?\nA:<|500|>"
    assert (tokenizer.eos_token_id, tokenizer.mask_token_id, len(tokenizer)) == (990, 999, 1000)
    with pytest.raises(ValueError, match="special token ids"):
        build_placeholder_tokenizer(1000, eos_id=5, mask_id=999)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_the_speed_experiment_times_each_cache_at_a_fixed_nfe(tmp_path, family):
    """The CPU speed experiment, shrunk: every setting runs its fixed number of passes (4 per block), the cached
    ones on shorter sequences, and the table leaves out the batched columns it did not measure."""
    result = run_cli(f"+experiment=speed_{family}_cpu", "stage=benchmark", *SMALL[family], "sweep.gen_lengths=[64]",
                     f"output_dir={tmp_path}", "progress=false")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(next(tmp_path.glob("artifacts/benchmark/*/benchmark.json")).read_text())
    assert [(r["cache"], r["nfe_mean"]) for r in rows] == [("none", 8.0), ("prefix", 8.0), ("dual", 8.0)]
    assert all(r["setting"]["steps"] == 8 and "tokens_per_s_batch16" not in r for r in rows)
    assert "tokens/s (b=1)" in result.stdout and "b=16" not in result.stdout and "random weights" in result.stderr


@pytest.mark.parametrize(("override", "message"), [
    ("model.implementation=remote", "model.implementation=remote: random weights are built by the native classes"),
    ("model.architecture.model_type=gpt2", "model.architecture.model_type=gpt2: allowed: llada, Dream"),
    ("model.architecture.n_layers=0", "model.architecture.n_layers=0: allowed: an integer >= 1"),
    ("model.mask_token_id=null", "model.mask_token_id=null: random weights come with no tokenizer"),
    ("model.random_weights=false", "model.path=null: allowed: a local directory or a hub id"),
])
def test_bad_random_weight_settings_are_refused_before_the_start_in_one_line(tmp_path, override, message):
    result = run_cli("model=llada_random", *SMALL["llada"], override, "stage=evaluate", "eval.num_prompts=1",
                     f"output_dir={tmp_path / 'out'}", "logger=none", "progress=false")
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(f"error: {message}"), \
        result.stderr
    assert not (tmp_path / "out").exists()


def test_an_architecture_the_native_classes_do_not_compute_is_named(tmp_path):
    result = run_cli("model=llada_random", *SMALL["llada"], "model.architecture.block_type=sequential",
                     "stage=evaluate", "eval.num_prompts=1", f"output_dir={tmp_path}", "logger=none", "progress=false")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: model.architecture.block_type=sequential: allowed: \"llama\""), result.stderr


def test_steps_per_block_fixes_the_nfe_of_every_gen_length(compose_cfg):
    cfg = compose_cfg(["+experiment=speed_llada_cpu"])
    assert [(s.gen_length, s.steps, s.cache) for s in expand_grid(cfg)] == [
        (256, 32, "none"), (256, 32, "prefix"), (256, 32, "dual"),
        (1024, 128, "none"), (1024, 128, "prefix"), (1024, 128, "dual")]
