"""Behaviour through the command line a user types: bad input fails at once, in one line, writing nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModel

from pipeline.configuration.hydra import PROJECT_ROOT
from tests.in_process import run_in_process


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300, env: dict[str, str] | None = None,
            module: str = "pipeline", fresh_interpreter: bool = False) -> subprocess.CompletedProcess:
    """``python -m module args``, run in this process (``tests.in_process``) unless ``fresh_interpreter``;
    ``timeout`` bounds a fresh interpreter only."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", **(env or {})}
    if not fresh_interpreter:
        return run_in_process(module, args, cwd or PROJECT_ROOT, env)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def as_in_a_terminal() -> None:
    """Give a command the Ctrl-C a terminal gives it: a shell that starts the tests in the background
    (``pytest &``) ignores SIGINT in them, and an ignored signal stays ignored across exec (``preexec_fn``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


MICRO = "+experiment=micro"
# (arguments, the start of the one-line message). Each names the setting and its value.
BAD_SETTINGS = [
    ([MICRO, "decode.eotp=maybe"], "decode.eotp=maybe: Value 'maybe' is not a valid bool"),
    ([MICRO, "decode=nonsense"], "decode=nonsense: no such option; allowed: credit, egp, entropy_bounded, factor"),
    (["+experiment=nope"], "experiment=nope: no such option; allowed: dream_gsm8k_256, frontier_arith"),
    ([MICRO, "decode.colour=1"], "decode.colour: no such setting; allowed: policy, gen_length"),
    ([MICRO, "sweep.grid=[{policy: threshold, thresold: 0.5}]"], "sweep.grid: thresold: no such setting"),
    ([MICRO, "sweep.grid=[{policy: threshold, threshold: 2}]"], "sweep.grid[0].threshold=2.0: allowed: a number in"),
    ([MICRO, "sweep.grid=[{policy: filter, threshold: 0}]"], "sweep.grid[0].threshold=0.0: allowed"),
    ([MICRO, "sweep.grid=[{policy: vanilla, eotp: [maybe]}]"], "sweep.grid[0].eotp=maybe: Value 'maybe'"),
    ([MICRO, "sweep.grid=[{policy: greedy}]"], "sweep.grid[0].policy=greedy: allowed: credit, egp"),
    ([MICRO, "sweep.split=bogus"], "sweep.split=bogus: allowed: train, validation, test"),
    ([MICRO, "sweep.num_prompts=0"], "sweep.num_prompts=0: allowed: 1 to 2035"),
    ([MICRO, "sweep.num_prompts=5000"], "sweep.num_prompts=5000: allowed: 1 to 2035"),
    (["stage=evaluate", "eval.num_prompts=0"], "eval.num_prompts=0: allowed: 1 to 2035"),
    ([MICRO, "trajectories.num_prompts=40000"], "trajectories.num_prompts=40000: allowed: 1 to 35254"),
    ([MICRO, "train_filter.lr=-1"], "train_filter.lr=-1.0: allowed: a number > 0"),
    ([MICRO, "train_filter.max_epochs=0"], "train_filter.max_epochs=0: allowed: an integer >= 1"),
    ([MICRO, "train_filter.batch_size=0"], "train_filter.batch_size=0: allowed: an integer >= 1"),
    ([MICRO, "train_filter.val_every_n_epochs=0"], "train_filter.val_every_n_epochs=0: allowed"),
    ([MICRO, "train_filter.loss_on=some"], "train_filter.loss_on=some: allowed: all, masked"),
    ([MICRO, "train_filter.target_precision=2"], "train_filter.target_precision=2.0: allowed: a number in (0, 1]"),
    ([MICRO, "train_filter.early_stopping_patience=0"], "train_filter.early_stopping_patience=0: allowed: an integer"),
    ([MICRO, "train_filter=fast"], "train_filter=fast: no such option; allowed: default, paper"),
    ([MICRO, "stage=train_policy", "train_policy.group_size=1"], "train_policy.group_size=1: allowed: an integer >= 2"),
    ([MICRO, "stage=train_policy", "train_policy.knob=[5.0]"], "train_policy.knob=5.0: allowed: speeds from 0 to 4"),
    ([MICRO, "stage=train_policy", "train_policy.reward=fast"], "train_policy.reward=fast: allowed: bonus, cost"),
    ([MICRO, "stage=train_policy", "train_policy.speed_draw=log_uniform"],
     "train_policy.speed_weights=[0.0, 4.0]: allowed with train_policy.speed_draw=log_uniform"),
    ([MICRO, "stage=train_policy", "train_policy.val_prompts=40000"], "train_policy.val_prompts=40000: allowed: 1 to"),
    ([MICRO, "stage=sweep", "trajectories.block_length=8", "sweep.block_length=16", "sweep.grid=[{policy:rl_filter}]"],
     "trajectories.block_length=8: the filter is tied to its block length; allowed: the decoded block length (16)"),
    ([MICRO, "trajectories.on_policy_rounds=-1"], "trajectories.on_policy_rounds=-1: allowed: an integer >= 0"),
    ([MICRO, "train_filter.target_precision=null", "sweep.grid=[{policy: filter, threshold: [null]}]"],
     "decode.threshold=null: a filter's validated threshold needs train_filter.target_precision"),
    ([MICRO, "task=chain", "task.max_steps=12"], "task.max_steps=12: allowed: task.min_steps (1) to 9"),
    ([MICRO, "aggregate.tolerance=-1"], "aggregate.tolerance=-1.0: allowed: a number in [0, 1)"),
    ([MICRO, "decode=filter", "decode.filter_path=/nonexistent"], "decode.filter_path=/nonexistent: no saved filter"),
    (["stage=evaluate", "decode=filter"], "decode.filter_path=null: decode=filter needs a saved filter"),
    ([MICRO, "task.max_steps=12"], "task.max_steps=12: allowed: task.min_steps (1) to 9"),
    ([MICRO, "task.max_operand=x"], "task.max_operand=x: Value 'x' of type 'str' could not be converted"),
    ([MICRO, "model.dtype=int8"], "model.dtype=int8: allowed: auto, float32, bfloat16, float16"),
    ([MICRO, "model.path=/nonexistent"], "model.path=/nonexistent: no model there"),
    ([MICRO, "device=tpu"], "device=tpu: allowed: auto, cpu, cuda, cuda:N"),
    ([MICRO, "threads=0"], "threads=0: allowed: an integer >= 1"),
    ([MICRO, "stage=bake"], "stage=bake: allowed: all, trajectories"),
    ([MICRO, "stage=sweep", "decode.policy=greedy"], "decode.policy=greedy: allowed: credit, egp, entropy"),
    ([MICRO, "trajectories.policy=threshold"], "trajectories.policy=threshold: allowed: egp, vanilla"),
    ([MICRO, "trajectories.num_shards=0"], "trajectories.num_shards=0: allowed: 1 to trajectories.num_prompts"),
    ([MICRO, "sweep.num_shards=2"], "sweep.num_shards=2: allowed: 1 to 1 (shards are cut at whole batches"),
    ([MICRO, "+task@trajectories.task=gsm8k", "trajectories.task.num_shots=x"],
     "trajectories.task.num_shots=x: Value 'x' of type 'str' could not be converted to Integer"),
    (["stage=evaluate", "decode=entropy_bounded", "decode.gamma=-1"], "decode.gamma=-1.0: allowed: a number >= 0"),
    (["stage=evaluate", "decode=klass", "decode.kl_bound=0"], "decode.kl_bound=0.0: allowed: a number > 0"),
    ([MICRO, "decode.eotp_rule=sometimes"],
     "decode.eotp_rule=sometimes: allowed: committed, learn2pd, learn2pd_filled"),
    ([MICRO, "model=llada_8b_instruct"], "model.path=GSAI-ML/LLaDA-8B-Instruct: not a local directory and not in"),
    ([MICRO, "model.family=gpt"], "model.family=gpt: allowed: embedded, llada, dream"),
    ([MICRO, "trajectories.shard=1"], "trajectories.shard=1: only with stage=trajectories"),
    ([MICRO, "filter.features=[confidence,colour]"], "filter.features=['confidence', 'colour']: allowed"),
    ([MICRO, "filter=mlp2_rich", "trajectories.features=[confidence]"], "filter.features=['confidence', 'entropy'"),
    (["stage=evaluate", "decode.gen_length=60"], "decode.block_length=16: must divide decode.gen_length=60"),
    (["stage=evaluate", "decode.cache=huge"], "decode.cache=huge: allowed: none, prefix, dual"),
    (["stage=evaluate", "decode.schedule=cosine"], "decode.schedule=cosine: allowed: llada, dream"),
    (["stage=evaluate", "decode.remasking=maskgit"],
     "decode.remasking=maskgit: allowed: low_confidence, random, margin"),
    (["stage=evaluate", "decode.ranking_precision=bf16"],
     "decode.ranking_precision=bf16: allowed: float32, model, float64"),
    ([MICRO, "logger.mode=loud"], "logger.mode=loud: allowed: offline, online, disabled"),
    ([MICRO, "+decode.threshold=0.5"], "Could not append to config. An item is already at 'decode.threshold'"),
    (["-m", MICRO, "stage=sweep", "decode=threshold", "decode.threshold=0.5,7"], "decode.threshold=7.0: allowed"),
    (["stage=pretrain", "pretrain.lr=0"], "pretrain.lr=0.0: allowed: a number > 0"),
    (["stage=pretrain", "pretrain.init_from=/nonexistent"], "pretrain.init_from=/nonexistent: no saved model there"),
    (["stage=pretrain", "pretrain.init_from=models/checkpoints/tiny-arith", "pretrain.architecture.hidden_size=16"],
     "pretrain.architecture.hidden_size=16: pretrain.init_from=models/checkpoints/tiny-arith has hidden_size=128"),
    ([MICRO, "output_dir=/etc/hostname/outputs"], "output_dir=/etc/hostname/outputs: /etc/hostname is not a folder"),
    ([MICRO, "stage=benchmark", "benchmark.warmup=99"],
     "benchmark.warmup=99: allowed: 0 to benchmark.num_prompts (32)"),
    ([MICRO, "stage=benchmark", "benchmark.batch_size=0"], "benchmark.batch_size=0: allowed: an integer >= 1"),
    ([MICRO, "launcher=pbs"], "launcher=pbs: no such option; allowed: local, slurm, slurm_local"),
    ([MICRO, "launcher.kind=pbs"], "launcher.kind=pbs: allowed: local, slurm"),
    ([MICRO, "launcher=slurm_local", "launcher.time_min=0"], "launcher.time_min=0: allowed: an integer >= 1"),
    ([MICRO, "launcher=slurm_local", "launcher.sweep_tasks=0"], "launcher.sweep_tasks=0: allowed: an integer >= 1"),
    ([MICRO, "launcher=slurm_local", "launcher.signal_delay_s=600"],
     "launcher.signal_delay_s=600: allowed: less than launcher.time_min (10 min) in seconds"),
    (["-m", MICRO, "stage=sweep", "launcher=slurm_local", "decode=threshold", "decode.threshold=0.5,0.7"],
     "launcher=slurm: launcher=slurm submits the experiment's whole DAG itself; for a Hydra multirun use"),
]


def refused_in_process(monkeypatch: pytest.MonkeyPatch, *args: str) -> subprocess.CompletedProcess:
    """The command line run in this process up to Hydra's start: every check before the start (composition,
    validation) runs as it does in a new interpreter, and a command that passes them all fails the test instead of
    starting work here. The interpreter's own exit is checked by the tests that start one."""
    from pipeline import cli

    monkeypatch.setattr(cli, "app", lambda: pytest.fail(f"{' '.join(args)}: passed every check before the start"))
    return run_cli(*args)


@pytest.mark.parametrize("args,message", BAD_SETTINGS, ids=[" ".join(a) for a, _ in BAD_SETTINGS])
def test_a_bad_setting_fails_in_one_line_with_status_2_and_writes_nothing(tmp_path, monkeypatch, args, message):
    out = tmp_path / "out"
    result = refused_in_process(monkeypatch, f"output_dir={out}", *args, "progress=false")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0], "one line, no traceback"
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert result.stdout == ""
    assert not out.exists()


def test_a_bad_setting_is_refused_before_torch_and_friends_are_imported():
    code = ("import sys\nfrom pipeline.cli import main\n"
            "sys.argv = ['pipeline', '+experiment=micro', 'train_filter.lr=-1']\n"
            "try:\n    main()\nexcept SystemExit as exit:\n    assert exit.code == 2\n"
            "print(sorted(m for m in ('torch', 'lightning', 'datasets', 'transformers', 'wandb') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_full_stack_is_there_when_asked_for(tmp_path):
    result = run_cli(f"output_dir={tmp_path / 'out'}", MICRO, "train_filter.lr=-1", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError: train_filter.lr=-1.0" in result.stderr


def test_a_prompt_longer_than_the_context_is_refused_in_one_line(tmp_path):
    result = run_cli("stage=evaluate", f"output_dir={tmp_path}", "decode.gen_length=512", "decode.block_length=32",
                     "progress=false")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: decode.gen_length=512: prompt 0 has")
    assert "Traceback" not in result.stderr


def test_help_lists_stages_experiments_and_policies():
    result = run_cli("--help")
    assert result.returncode == 0
    for word in ("all", "trajectories", "train_filter", "train_policy", "sweep", "aggregate", "evaluate", "pretrain",
                 "score_references", "experiment: dream_gsm8k_256, frontier_arith, frontier_arith_256",
                 "decode: credit, egp, entropy_bounded, factor, filter, klass, local_leap, prophet, rl_filter,",
                 "frontier_arith_full, frontier_chain, frontier_chain_16, frontier_chain_256, frontier_chain_32",
                 "model: dream_7b_instruct, dream_random, llada_1_5_8b, llada_8b_instruct, llada_random",
                 "task: arith, chain, gsm8k, humaneval, jsonl, lm_eval, lm_eval_gsm8k, math, mbpp",
                 "train_filter: default, paper", "train_policy: default"):
        assert word in result.stdout


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
    assert result.stdout == "", "stdout carries results only"
    import models.diffusion_lm  # noqa: F401  (registers the embedded model)

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
    other = tmp_path / "chain-model"
    continued = run_cli(
        "stage=pretrain", "task=chain", "model.name=micro-chain", f"output_dir={tmp_path}",
        f"pretrain.save_to={other}", f"pretrain.init_from={save_to}", "pretrain.max_steps=2", "pretrain.batch_size=4",
        "pretrain.architecture.hidden_size=16", "pretrain.architecture.num_hidden_layers=1",
        "pretrain.architecture.num_attention_heads=2", "pretrain.architecture.intermediate_size=32",
        "pretrain.val_every=100", "pretrain.val_prompts=4", "progress=false",
    )
    assert continued.returncode == 0, continued.stderr[-3000:]
    assert f"starting from the weights of {save_to}" in continued.stderr and (other / "config.json").exists()


def test_evaluate_decodes_the_test_split_with_the_shipped_model(tmp_path):
    result = run_cli("stage=evaluate", f"output_dir={tmp_path}", "decode=egp", "decode.eotp=true",
                     "decode.gen_length=32", "decode.block_length=8", "eval.num_prompts=8", "progress=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "egp gen_length=32 block=8 eotp=True: accuracy" in result.stderr


@pytest.mark.parametrize("stage", ["sweep", "aggregate"])
def test_reuse_only_refuses_to_compute_a_missing_upstream_in_one_line(tmp_path, stage):
    result = run_cli(MICRO, f"stage={stage}", "reuse_only=true", f"output_dir={tmp_path}", "logger=none",
                     "progress=false")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "reuse_only=true forbids computing it" in line
    assert not list(tmp_path.glob("artifacts/*/*/manifest.json"))


def test_launcher_slurm_without_slurm_says_where_to_submit_from(tmp_path):
    result = run_cli(MICRO, "launcher=slurm", f"output_dir={tmp_path / 'out'}", env={"PATH": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.startswith("error: launcher=slurm: sbatch and srun not on PATH: submit from a machine of the "
                                    "cluster, or use launcher=local"), result.stderr


def test_a_multirun_keeps_stdout_for_results(tmp_path):
    result = run_cli("-m", MICRO, "stage=evaluate", "eval.num_prompts=2", "decode=threshold",
                     "decode.threshold=0.5,0.9", f"output_dir={tmp_path}", "progress=false", "logger=none")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[HYDRA]" not in result.stdout and "Launching 2 jobs locally" in result.stderr
    assert result.stdout.count("accuracy") == 2


def test_a_single_run_s_folder_is_the_one_hydra_main_writes(tmp_path):
    """A single run is composed once and run through Hydra's job steps; ``hydra.mode=RUN`` on the command line
    sends the same run through ``hydra.main``: both folders hold the same config, Hydra config, overrides and
    log lines (their own folder's name aside)."""
    import yaml

    args = [MICRO, "stage=trajectories", "trajectories.num_prompts=2", "logger=none", "progress=false",
            f"output_dir={tmp_path / 'out'}"]
    assert run_cli(*args).returncode == 0  # computed once, so that both runs below reuse it alike
    folders = [tmp_path / "composed_once", tmp_path / "hydra_main"]
    for folder, extra in zip(folders, ([], ["hydra.mode=RUN"])):
        assert run_cli(*args, f"hydra.run.dir={folder}", *extra).returncode == 0

    def read(folder: Path, name: str):
        return yaml.safe_load((folder / ".hydra" / name).read_text().replace(str(folder), "RUN_DIR"))

    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        assert read(folders[0], name) == read(folders[1], name), name
    assert read(folders[0], "hydra.yaml")["hydra"]["job"]["name"] == "cli"
    logs = [[line.split("]", 1)[1] for line in (f / "cli.log").read_text().splitlines()] for f in folders]
    assert logs[0] and logs[0] == logs[1]
