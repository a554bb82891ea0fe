"""Behaviour through the command line a user types: bad input fails early and clearly; pretraining runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModel

from pipeline.config import PROJECT_ROOT


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd or PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,message", [
    (["decode.gen_length=60", "decode.block_length=16"],
     "decode.gen_length=60 is not a multiple of decode.block_length"),
    (["decode.steps=5"], "decode.steps=5 is not divisible by the number of blocks"),
    (["decode=threshold", "decode.threshold=1.5"], "decode.threshold=1.5 is out of range"),
    (["decode=threshold", "decode.threshold=0"], "decode.threshold=0 is out of range"),
    (["decode=nonsense"], "Could not find 'decode/nonsense'"),
    (["decode.policy=greedy"], "decode.policy='greedy' is unknown; allowed: egp, factor, filter"),
    (["stage=bake"], "stage='bake' is unknown"),
    (["device=tpu"], "device='tpu' is unknown"),
])
def test_bad_settings_fail_before_work_with_a_clear_message(tmp_path, args, message):
    result = run_cli("stage=evaluate", f"output_dir={tmp_path}", *args)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "artifacts").exists()


def test_a_prompt_longer_than_the_context_is_refused(tmp_path):
    result = run_cli("stage=evaluate", f"output_dir={tmp_path}", "decode.gen_length=512", "decode.block_length=32")
    assert result.returncode != 0
    assert "exceeds the model's context of 512" in result.stderr


def test_pretraining_a_micro_model_for_a_few_steps_saves_a_loadable_model(tmp_path):
    save_to = tmp_path / "model"
    result = run_cli(
        "stage=pretrain", f"output_dir={tmp_path}", f"pretrain.save_to={save_to}", "pretrain.max_steps=4",
        "pretrain.batch_size=4", "pretrain.architecture.hidden_size=16", "pretrain.architecture.num_hidden_layers=1",
        "pretrain.architecture.num_attention_heads=2", "pretrain.architecture.intermediate_size=32",
        "pretrain.val_every=2", "pretrain.val_prompts=4", "pretrain.checkpoint_every=2", "progress=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation exact match" in result.stderr
    import models  # noqa: F401

    model = AutoModel.from_pretrained(save_to)
    assert model.config.num_hidden_layers == 1
    assert (tmp_path / "pretrain" / "tiny-arith" / "checkpoints" / "last.ckpt").exists()
    again = run_cli(
        "stage=pretrain", f"output_dir={tmp_path}", f"pretrain.save_to={save_to}", "pretrain.max_steps=6",
        "pretrain.batch_size=4", "pretrain.architecture.hidden_size=16", "pretrain.architecture.num_hidden_layers=1",
        "pretrain.architecture.num_attention_heads=2", "pretrain.architecture.intermediate_size=32",
        "pretrain.val_every=100", "pretrain.val_prompts=4", "progress=false",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr


def test_evaluate_decodes_the_test_split_with_the_shipped_model(tmp_path):
    result = run_cli("stage=evaluate", f"output_dir={tmp_path}", "decode=egp", "decode.eotp=true",
                     "decode.gen_length=32", "decode.block_length=8", "eval.num_prompts=8", "progress=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "egp gen_length=32 block=8 eotp=True: accuracy" in result.stderr
