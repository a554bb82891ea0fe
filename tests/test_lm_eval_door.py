"""``python -m pipeline.lm_eval`` keeps the command line's promise: a bad argument, model argument, task name or
task file is one line naming it, exit status 2, in a few seconds and before any model is loaded or any file written;
the documented ``device=`` and ``batch_size=`` model arguments are accepted; Ctrl-C is one line of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.configuration.hydra import PROJECT_ROOT
from tests.test_cli import as_in_a_terminal, run_cli
from tests.test_lm_eval import GENERATE_TASK, MODEL_ARGS, arith_examples, arith_examples_of

BROKEN_TASK = "task: broken\ndataset_path: json\noutput_type: [generate_until\n"  # the flow list never closes


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    """A folder with the generation task of tests/test_lm_eval.py (four test prompts), one with a task file that is
    not valid YAML, one with the task reading a data file that does not exist."""
    root = tmp_path_factory.mktemp("lm_eval_door")
    folder = root / "tasks"
    folder.mkdir()
    for split, examples in (("test", arith_examples(4)), ("train", arith_examples_of("train", 2))):
        rows = [{"prompt": ex.prompt, "final": ex.answer.split("#")[0]} for ex in examples]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "arith_local.yaml").write_text(GENERATE_TASK.format(data=folder / "test.jsonl",
                                                                  train=folder / "train.jsonl"))
    (root / "broken").mkdir()
    (root / "broken" / "broken.yaml").write_text(BROKEN_TASK)
    (root / "nodata").mkdir()
    (root / "nodata" / "arith_local.yaml").write_text(GENERATE_TASK.format(data=root / "nodata" / "missing.jsonl",
                                                                           train=folder / "train.jsonl"))
    return root


def lm_eval(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, module="pipeline.lm_eval")


# (arguments, the one line); "{t}" is the tasks fixture's folder, "{o}" an output folder. The model arguments, task
# and include path are good unless the case changes them.
REFUSED = [
    (["--tasks", "arith_locl"], "error: --tasks=arith_locl: no such lm-eval task built in or under --include_path; "
                                "close matches: arith_local"),
    (["--tasks", "gsm8kk", "--include_path", "{t}/tasks"], "error: --tasks=gsm8kk: no such lm-eval task built in or "
                                                           "under --include_path; close matches: gsm8k"),
    (["--tasks", "broken", "--include_path", "{t}/broken"],
     "error: {t}/broken/broken.yaml: not valid YAML (line 4: did not find expected ',' or ']'); fix the file"),
    (["--include_path", "{t}/nowhere"], "error: {t}/nowhere: no such folder; point --include_path at a folder"),
    (["--include_path", "{t}/nodata"], "error: {t}/nodata/missing.jsonl: no such data file; fix "
                                       "dataset_kwargs.data_files in {t}/nodata/arith_local.yaml"),
    (["--tasks", "arith_[xyz]*"], "error: --tasks=arith_[xyz]*: no such lm-eval task built in or under"),
    (["--tasks", "{t}/missing.yaml"], "error: {t}/missing.yaml: no such task file"),
    (["--limit", "0"], "error: --limit=0: allowed: a number of documents per task (an integer >= 1) or a fraction"),
    (["--limit", "2.5"], "error: --limit=2.5: allowed: a number of documents per task"),
    (["--limit", "nan"], "error: --limit=nan: allowed: a number of documents per task"),
    (["--limit", "many"], "error: --limit: invalid float value: 'many'"),
    (["--model_args", "model=tiny,mc_num=1.5"], "error: --model_args mc_num=1.5: allowed: an integer >= 1"),
    (["--model_args", "model=tiny,mc_num=10,mc_batch_size=4"], "error: --model_args mc_num=10: allowed: a positive "
                                                               "multiple of mc_batch_size (4)"),
    (["--seed", "99999999999999999999"], "error: --seed=99999999999999999999: allowed: integers from 0 to 4294967295"),
    (["--seed", "0,1234,-1,1234"], "error: --seed=-1: allowed: integers from 0 to 4294967295"),
    (["--seed", "lucky"], "error: --seed: lucky is not an integer or None; allowed: an integer, or four"),
    (["--model_args", "model=tiny,seed=4294967296"], "error: --model_args seed=4294967296: allowed: an integer from "
                                                     "0 to 4294967295"),
    (["--model_args", "model=tiny,temperature=nan"], "error: --model_args temperature=nan: allowed: a finite number"),
    (["--model_args", "model=tiny,decode=threshold,threshold=inf"],
     "error: --model_args threshold=inf: allowed: a finite number"),
    (["--model_args", "model=tiny,decode=threshold,threshold=1.5"],
     "error: --model_args threshold=1.5: allowed: a number in (0, 1]"),
    (["--model_args", "model=tiny,gen_length=60,block_length=16"],
     "error: --model_args block_length=16: must divide decode.gen_length=60"),
    (["--model_args", "model=tiny,threshold=high"],
     "error: --model_args threshold=high: Value 'high' of type 'str' could not be converted to Float"),
    (["--model_args", "model=tiny,device=gpu"], "error: --model_args device=gpu: allowed: auto, cpu, cuda, cuda:N"),
    (["--model_args", "model=tiny,device=cpu", "--device", "cuda"],
     "error: --model_args device=cpu: --device cuda says otherwise"),
    (["--model_args", "model=tiny,batch_size=0"], "error: --model_args batch_size=0: allowed: an integer >= 1"),
    (["--batch_size", "none"], "error: --batch_size=none: allowed: an integer >= 1, auto or auto:N"),
    (["--model_args", "model=nonsense"], "error: --model_args model=nonsense: no such preset; allowed: "
                                         "dream_7b_instruct, dream_random, llada_1_5_8b"),
    (["--model_args", "model=tiny,model_path={t}/no-model"], "error: --model_args model_path={t}/no-model: no model "
                                                             "there"),
    (["--gen_kwargs", "max_gen_toks=inf"], "error: --gen_kwargs max_gen_toks=inf: allowed: a finite number"),
    (["--num_fewshot", "-1"], "error: --num_fewshot=-1: allowed: an integer >= 0"),
    (["--log_samples"], "error: Specify --output_path if providing --log_samples"),
]


def command(tasks: Path, args: list[str], out: Path) -> list[str]:
    """A good command (the tiny model, the local task, two documents, an output folder) with ``args`` in place of
    its own options; ``{t}`` in them is the tasks fixture's folder."""
    args = [a.replace("{t}", str(tasks)) for a in args]
    good = {"--model_args": MODEL_ARGS, "--tasks": "arith_local", "--include_path": str(tasks / "tasks"),
            "--limit": "2", "--output_path": str(out)}
    if "--log_samples" in args:
        del good["--output_path"]
    return ["--model", "learn2pd", *[x for flag, value in good.items() if flag not in args for x in (flag, value)],
            *args]


@pytest.mark.parametrize(("args", "message"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_a_bad_argument_is_one_line_before_anything_loads(tasks, tmp_path, monkeypatch, args, message):
    from lm_eval.tasks import TaskManager

    import pipeline.modeling.loading

    def loads(*args, **kwargs):
        raise AssertionError("the refusal waited for something it does not need (a model, lm-eval's task index)")

    monkeypatch.setattr(pipeline.modeling.loading, "load_model", loads)
    monkeypatch.setattr(TaskManager, "__init__", loads)
    out = tmp_path / "out"
    result = lm_eval(*command(tasks, args, out))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.replace("{t}", str(tasks))), result.stderr[-3000:]
    assert not out.exists(), "nothing written"


def strict_json(path: Path) -> dict:
    """JSON as the standard has it: NaN and Infinity are not numbers there."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_device_and_batch_size_in_the_model_arguments_are_the_run_s(tasks, tmp_path):
    """As the README documents them: no clash with lm-eval's own --device and --batch_size (and their defaults)."""
    out = tmp_path / "out"
    result = lm_eval(*command(tasks, ["--model_args", f"{MODEL_ARGS},device=cpu,batch_size=2"], out))
    assert result.returncode == 0, result.stderr[-3000:]
    speed = strict_json(next(out.rglob("learn2pd_speed.json")))
    assert speed["decode"]["batch_size"] == 2 and speed["speed"]["arith_local"]["samples"] == 2
    assert next(out.rglob("results_*.json")).parent == next(out.rglob("learn2pd_speed.json")).parent


def test_ctrl_c_is_one_line_of_its_own(tasks, tmp_path):
    """Interrupted while the model loads: lm-eval's own words, not the pipeline's (no artifacts or shards here)."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    process = subprocess.Popen([sys.executable, "-m", "pipeline.lm_eval", *command(tasks, [], out)], cwd=PROJECT_ROOT,
                               env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=as_in_a_terminal)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "Initializing learn2pd model" in line:
            break
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    stderr = "".join(seen) + rest
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "interrupted: lm-eval stopped; no results were written (rerun the same " \
                                              "command)"
    assert not out.exists() or not list(out.rglob("*.json")), "no results"


def test_a_likelihood_that_is_not_a_number_is_one_line(monkeypatch, capsys):
    """A diverged model's NaN (FloatingPointError) is the user's to fix (another model, another dtype), in one line."""
    import pipeline.lm_eval.command as door

    def diverged(*args) -> None:
        raise FloatingPointError("loglikelihood: the Monte-Carlo estimate is nan, not a finite number")

    monkeypatch.setattr(door, "preflight", lambda argv: None)
    monkeypatch.setattr(door, "evaluate", diverged)
    with pytest.raises(SystemExit) as exit_status:
        door.main(["--model", "learn2pd"])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["error: loglikelihood: the Monte-Carlo estimate is nan, not a "
                                                    "finite number"]


def test_a_speed_that_is_not_a_number_is_not_written(tmp_path):
    """learn2pd_speed.json holds standard JSON or nothing."""
    from types import SimpleNamespace

    from pipeline.decoding.settings import DecodeSettings
    from pipeline.lm_eval.command import write_speed

    speed = {"arith_local": {"samples": 1, "nfe_mean": 4.0, "tokens": 0, "seconds": 0.0, "tokens_per_s": float("nan")}}
    lm = SimpleNamespace(name="tiny", settings=DecodeSettings(), world_size=1)
    with pytest.raises(FloatingPointError, match="learn2pd_speed.json: speed arith_local tokens_per_s is nan"):
        write_speed(lm, speed, str(tmp_path), 0.0)
    assert not list(tmp_path.iterdir())
    speed["arith_local"]["tokens_per_s"] = 2.5
    write_speed(lm, speed, str(tmp_path), 0.0)
    assert strict_json(tmp_path / "learn2pd_speed.json")["speed"] == speed
