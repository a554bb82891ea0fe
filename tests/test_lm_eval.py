"""The ``learn2pd`` model for lm-evaluation-harness, on tiny local tasks in lm-eval's YAML form (``dataset_path:
json`` with data files) and the embedded model: through ``python -m pipeline.lm_eval`` and lm-eval's Python API,
its generations and scores the same as the pipeline's own on the same prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.configuration.hydra import PROJECT_ROOT
from pipeline.decoding.settings import DecodeSettings
from pipeline.evaluation.setting import evaluate_setting
from pipeline.tasks.prompts import encode_prompt
from tests.conftest import compose_config
from tests.test_cli import run_cli

N = 8
SETTING = {"policy": "threshold", "threshold": 0.9, "eotp": True, "gen_length": 64, "block_length": 16}
MODEL_ARGS = "model=tiny,decode=threshold,threshold=0.9,eotp=true,gen_length=64,block_length=16"


def arith_examples_of(split: str, n: int):
    from pipeline.tasks.registry import build_task

    return build_task(compose_config([]).task).examples(split, n)


def arith_examples(n: int = N):
    return arith_examples_of("test", n)


GENERATE_TASK = """task: arith_local
dataset_path: json
dataset_kwargs:
  data_files:
    train: {train}
    test: {data}
training_split: train
test_split: test
fewshot_split: train
target_delimiter: ""
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{final}}}}"
generation_kwargs:
  until: ["#"]
  max_gen_toks: 64
filter_list:
  - name: strict
    filter:
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

CHOICE_TASK = """task: arith_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: 0
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module", autouse=True)
def one_task_index_per_include_path():
    """lm-eval's ``TaskManager`` indexes its thousands of task YAMLs when built (some 15 s of CPU); the tests in this
    process build one per set of arguments and reuse it. (Each command line a test starts builds its own.)"""
    import lm_eval.tasks

    build, built = lm_eval.tasks.TaskManager, {}

    def shared(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in built:
            built[key] = build(*args, **kwargs)
        return built[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lm_eval.tasks, "TaskManager", shared)
        yield


@pytest.fixture(scope="module")
def loaded():
    """The shipped model as the pipeline loads it."""
    import torch

    from pipeline.modeling.loading import load_model

    return load_model(compose_config([]).model, torch.device("cpu"))


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory) -> Path:
    """Both tasks over the first test prompts of the embedded arithmetic task. The generation task scores the
    text before the final ``#`` (the worked steps, cut by lm-eval's ``until``) against the reference's."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    examples = arith_examples()
    rows = [{"prompt": ex.prompt, "final": ex.answer.split("#")[0]} for ex in examples]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    choices = [{"prompt": ex.prompt, "choices": [ex.answer, ex.answer[::-1]]} for ex in examples]
    (folder / "choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in choices))
    train = [{"prompt": ex.prompt, "final": ex.answer.split("#")[0]} for ex in arith_examples_of("train", 4)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (folder / "arith_local.yaml").write_text(GENERATE_TASK.format(data=folder / "test.jsonl",
                                                                  train=folder / "train.jsonl"))
    (folder / "arith_choice.yaml").write_text(CHOICE_TASK.format(data=folder / "choice.jsonl"))
    return folder


def pipeline_generations(loaded) -> list[str]:
    """The pipeline's own decodes of the same prompts under the same setting, cut where lm-eval cuts them."""
    from pipeline.tasks.registry import build_task

    task = build_task(compose_config([]).task)
    result = evaluate_setting(loaded, task, arith_examples(), DecodeSettings(**SETTING, batch_size=N))
    return [row["generated"].split("#")[0] for row in result["rows"]]


def test_the_command_line_scores_as_the_pipeline_decodes_and_reports_speed(local_tasks, loaded, tmp_path):
    out = tmp_path / "results"
    result = run_cli("--model", "learn2pd", "--model_args", MODEL_ARGS, "--batch_size", "4", "--tasks",
                     "arith_local", "--include_path", str(local_tasks), "--output_path", str(out), "--log_samples",
                     module="pipeline.lm_eval")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = [json.loads(line) for line in next(out.rglob("samples_arith_local_*.jsonl")).read_text().splitlines()]
    samples.sort(key=lambda s: s["doc_id"])
    ours = pipeline_generations(loaded)
    assert [s["resps"][0][0] for s in samples] == ours, "the same decodes as the pipeline's"
    references = [s["target"] for s in samples]
    expected = sum(a == b for a, b in zip(ours, references)) / N
    scores = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["arith_local"]
    assert scores["exact_match,strict"] == pytest.approx(expected) and expected > 0.5
    speed = json.loads((next(out.rglob("results_*.json")).parent / "learn2pd_speed.json").read_text())
    task_speed = speed["speed"]["arith_local"]
    assert task_speed["samples"] == N and 1 < task_speed["nfe_mean"] < 16 and task_speed["tokens_per_s"] > 0
    assert "learn2pd decoding speed" in result.stdout and "| arith_local | 8 |" in result.stdout


def samples_of(out: Path, task: str) -> list[dict]:
    found = [json.loads(line) for line in next(out.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()]
    return sorted(found, key=lambda s: s["doc_id"])


@pytest.mark.slow
def test_two_processes_give_a_single_process_s_outputs_and_sum_its_speed(local_tasks, tmp_path):
    """``torchrun --nproc_per_node 2`` (gloo on CPU): lm-eval gives each process every other document and pads
    the shorter share (7 documents: 4 and 3) with a copy of its last request, which is neither decoded again nor
    counted; every generation and likelihood equals the single process's."""
    args = ["--model", "learn2pd", "--model_args", f"{MODEL_ARGS},mc_num=8,mc_batch_size=8", "--batch_size", "2",
            "--tasks", "arith_local,arith_choice", "--include_path", str(local_tasks), "--limit", "7",
            "--log_samples"]
    single = run_cli(*args, "--output_path", str(tmp_path / "one"), module="pipeline.lm_eval")
    assert single.returncode == 0, single.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "pipeline.lm_eval", *args, "--output_path", str(tmp_path / "two")],
                         cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    for task in ("arith_local", "arith_choice"):
        one, both = samples_of(tmp_path / "one", task), samples_of(tmp_path / "two", task)
        assert [s["doc_id"] for s in both] == list(range(7))
        # (lm-eval appends its padding's response to the padded request's own: compare each request's first)
        assert [[r[0] for r in s["resps"]] for s in both] == [[r[0] for r in s["resps"]] for s in one], task
        assert [s["filtered_resps"] for s in both] == [s["filtered_resps"] for s in one], task
    results = [json.loads(next((tmp_path / run).rglob("results_*.json")).read_text())["results"]
               for run in ("one", "two")]
    for task, scores in results[0].items():  # (lm-eval gathers the ranks' scores out of order: sums may round apart)
        assert {k: pytest.approx(v) if isinstance(v, float) else v for k, v in scores.items()} == results[1][task]
    speeds = [json.loads(next((tmp_path / run).rglob("learn2pd_speed.json")).read_text()) for run in ("one", "two")]
    assert speeds[1]["processes"] == 2 and speeds[1]["speed"]["arith_local"]["processes"] == 2
    for figure in ("samples", "tokens", "nfe_mean"):
        assert speeds[1]["speed"]["arith_local"][figure] == speeds[0]["speed"]["arith_local"][figure] == \
            {"samples": 7}.get(figure, speeds[0]["speed"]["arith_local"][figure])
    assert two.stdout.count("learn2pd decoding speed (generated tokens only, 2 processes)") == 1, "said once"


def test_lm_eval_s_padding_of_a_shorter_share_is_found():
    from types import SimpleNamespace

    from pipeline.lm_eval.ranks import padding

    a, b = SimpleNamespace(repeats=1), SimpleNamespace(repeats=2)
    assert padding([a, b, b], 2) == 0, "a request's own repeats are not padding"
    assert padding([a, b, b, b, b], 2) == 2 and padding([b, a, a], 2) == 1
    assert padding([a, a], 1) == 0, "a single process is never padded"


@pytest.mark.parametrize("ending,status,stderr", [("print('written', flush=False)", 0, ""),
                                                  ("raise SystemExit(3)", 3, ""),
                                                  ("raise SystemExit('refused: x')", 1, "refused: x"),
                                                  ("raise ValueError('boom')", 1, "ValueError: boom")])
def test_a_launched_process_ends_with_its_command_s_status_and_output(ending, status, stderr):
    """One of torchrun's processes skips the interpreter's shutdown (``run_as_rank``) but keeps what a normal exit
    gives: the command's status, its unflushed output, its error."""
    script = ("import logging, sys\nfrom pipeline.lm_eval.ranks import run_as_rank\n"
              "def main():\n    print('started')\n    logging.getLogger('x').warning('logged')\n"
              f"    {ending}\nrun_as_rank(main)\nprint('not reached')\n")
    ended = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "WORLD_SIZE": "2"})
    assert ended.returncode == status, ended.stderr
    assert ended.stdout.startswith("started\n") and "not reached" not in ended.stdout
    assert "written" in ended.stdout or status != 0
    assert "logged" in ended.stderr and stderr in ended.stderr


def test_the_python_api_runs_the_registered_model_and_likelihoods_prefer_the_answer(local_tasks):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import pipeline.lm_eval.model  # noqa: F401  (registers learn2pd)

    results = lm_eval.simple_evaluate(model="learn2pd", model_args="model=tiny,mc_num=8,mc_batch_size=8,seed=1",
                                      tasks=["arith_choice"], task_manager=TaskManager(include_path=str(local_tasks)),
                                      device="cpu")
    assert results["results"]["arith_choice"]["acc,none"] >= 0.75, "the reference beats its reversal"


def test_the_monte_carlo_estimate_is_llada_s(loaded):
    """LLaDA's estimate: at every masking the continuation's masked tokens' cross-entropy over the masked share;
    with all of it masked (one token) the estimate is the exact log-probability."""
    import torch

    from pipeline.lm_eval.model import Learn2PDLM

    lm = Learn2PDLM.wrap(loaded, DecodeSettings(), "tiny", mc_num=4, mc_batch_size=2)
    tokenizer = loaded.tokenizer
    example = arith_examples(1)[0]
    prefix = encode_prompt(tokenizer, example)
    target = tokenizer(example.answer[:1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = loaded.model(torch.tensor([prefix + [loaded.mask_id]])).logits[0, -1].float()
    exact = float(torch.log_softmax(logits, -1)[target[0]])
    assert lm.monte_carlo_loglikelihood(prefix, target) == pytest.approx(exact, abs=1e-5)
    whole = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    wrong = tokenizer(example.answer[::-1], add_special_tokens=False)["input_ids"]
    assert lm.monte_carlo_loglikelihood(prefix, whole) > lm.monte_carlo_loglikelihood(prefix, wrong)
    assert lm.greedy_suffix(prefix, target) == (int(logits.argmax()) == target[0])


@pytest.mark.parametrize(("args", "message"), [
    (["--model_args", "model=tiny,threshhold=0.9"], "error: --model_args threshhold=0.9: allowed: model,"),
    (["--model_args", "model=tiny,decode=filter"], "error: --model_args filter_path=null: the filter policy needs"),
    (["--model_args", "model=tiny,mc_num=10,mc_batch_size=4"], "error: --model_args mc_num=10: allowed: a positive"),
    (["--model_args", "model=tiny", "--tasks", "gsm8k"],
     "error: openai/gsm8k: the dataset is not available offline; fetch it with `huggingface-cli download"),
])
def test_bad_model_arguments_and_missing_data_are_one_line(local_tasks, args, message):
    tasks = [] if "--tasks" in args else ["--tasks", "arith_local"]
    result = run_cli("--model", "learn2pd", *args, *tasks, "--include_path", str(local_tasks), "--limit", "2",
                     module="pipeline.lm_eval")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith(message), \
        result.stderr[-2000:]


def lm_eval_task(local_tasks, **changes):
    from pipeline.tasks.registry import build_task

    overrides = ["task=lm_eval", "task.lm_eval_task=arith_local", f"task.include_path={local_tasks}",
                 *(f"task.{k}={v}" for k, v in changes.items())]
    return build_task(compose_config(overrides).task)


def test_an_lm_eval_task_gives_lm_eval_s_contexts_stops_and_scores(local_tasks):
    """Prompts are lm-eval's contexts (few-shot examples from its fewshot split), generations are cut at its
    ``until`` strings and scored through its filters."""
    task = lm_eval_task(local_tasks)
    examples = task.examples("test", 3)
    reference = arith_examples(3)
    assert [ex.prompt for ex in examples] == [ex.prompt for ex in reference]
    assert [ex.final for ex in examples] == [ex.answer.split("#")[0] for ex in reference]
    assert task.stop_strings == ("#",) and task.split_size("train") == 4
    right, wrong = reference[0].answer, "1:000+00=000#000"
    scores = task.score_many(examples[:1] * 2, [right, wrong])
    assert [s.exact_match for s in scores] == [True, False]
    assert scores[0].metrics == {"exact_match,strict": 1.0} and scores[1].metrics == {"exact_match,strict": 0.0}
    shots = lm_eval_task(local_tasks, num_fewshot=2).examples("test", 1)[0].prompt
    train = arith_examples_of("train", 4)
    assert shots.endswith(reference[0].prompt) and sum(ex.answer.split("#")[0] in shots for ex in train) == 2, \
        "two worked examples from the fewshot split, then the prompt"
    assert shots == lm_eval_task(local_tasks, num_fewshot=2).examples("test", 1)[0].prompt, "seeded"


def test_the_pipeline_evaluates_an_lm_eval_task_with_lm_eval_s_metrics(local_tasks, loaded, tmp_path):
    result = run_cli("stage=evaluate", "task=lm_eval", "task.lm_eval_task=arith_local",
                     f"task.include_path={local_tasks}", f"eval.num_prompts={N}", "decode=threshold",
                     "decode.eotp=true", f"output_dir={tmp_path}", "logger=none", "progress=false")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = sum(a == b.answer.split("#")[0] for a, b in zip(pipeline_generations(loaded), arith_examples())) / N
    assert f"accuracy           {100 * expected:.1f}%" in result.stdout
    assert f"exact_match,strict {expected:.4g}" in result.stdout and "on lm_eval:arith_local test" in result.stdout


def test_a_likelihood_task_is_not_decoded(local_tasks):
    with pytest.raises(Exception, match="a multiple_choice task; the pipeline decodes generate_until tasks"):
        lm_eval_task(local_tasks, lm_eval_task="arith_choice").examples("test", 1)


def test_lm_eval_s_gsm8k_reads_a_local_copy_in_the_hub_layout_and_names_a_missing_one(tmp_path):
    """``task.dataset_path``: a ``huggingface-cli download --local-dir`` copy (parquet shards and the README's
    config table, as openai/gsm8k ships them) replaces the hub dataset; without one nothing is downloaded."""
    import datasets

    from models.errors import InputError
    from pipeline.evaluation.scorer_agreement import documents
    from pipeline.tasks.lm_eval_task import LmEvalTask

    rows = [{"question": d["question"], "answer": d["answer"]} for d in documents(6)]
    (tmp_path / "main").mkdir()
    for split in ("train", "test"):
        datasets.Dataset.from_list(rows).to_parquet(tmp_path / "main" / f"{split}-00000-of-00001.parquet")
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n"
                                        "    path: main/train-*\n  - split: test\n    path: main/test-*\n---\n")
    task = LmEvalTask("gsm8k", num_fewshot=2, dataset_path=str(tmp_path))
    prompt = task.examples("test", 1)[0].prompt
    assert prompt.startswith("Question: ") and prompt.endswith(f"Question: {rows[0]['question']}\nAnswer:")
    assert prompt.count("Question: ") == 3 and task.stop_strings[0] == "Question:"
    with pytest.raises(InputError, match="openai/gsm8k: the dataset is not available offline"):
        LmEvalTask("gsm8k").examples("test", 1)


def test_the_hand_written_gsm8k_scorer_differs_from_lm_eval_s_only_on_decimal_zeros():
    """The agreement table of the README, on fewer documents: every class of output is scored alike by the
    project's GSM8K scorer and lm-eval's gsm8k filters, except an answer written with decimal zeros (``#### 42.00``),
    which the project normalises and lm-eval's exact match does not."""
    from pipeline.evaluation.scorer_agreement import agreement

    result = agreement(n=6)
    disagreeing = {r["class"] for r in result["classes"] if r["strict agree"] < 1 or r["flexible agree"] < 1}
    assert disagreeing == {"#### with decimal zeros"}
    by_class = {r["class"]: r for r in result["classes"]}
    assert by_class["reference"]["lm_eval_strict"] == by_class["reference"]["ours"] == 1.0
    assert by_class["answer is N."]["lm_eval_strict"] == 0.0 and by_class["answer is N."]["lm_eval_flexible"] == 1.0
    assert by_class["wrong number after ####"]["ours"] == by_class["wrong number after ####"]["lm_eval_flexible"] == 0
    assert result["outputs"] == 6 * len(by_class)


def test_trajectories_take_their_prompts_from_an_lm_eval_task_s_training_split(local_tasks, tmp_path):
    result = run_cli("+experiment=micro", "stage=trajectories", "+task@trajectories.task=lm_eval",
                     "trajectories.task.lm_eval_task=arith_local", f"trajectories.task.include_path={local_tasks}",
                     "trajectories.num_prompts=4", f"output_dir={tmp_path}", "logger=none", "progress=false")
    assert result.returncode == 0, result.stderr[-3000:]
    import datasets

    shards = sorted((tmp_path / "artifacts" / "trajectories").glob("*/shards/*/*.arrow"))
    rows = datasets.concatenate_datasets([datasets.Dataset.from_file(str(p)) for p in shards])
    assert sorted(set(rows["sample"])) == [0, 1, 2, 3], "one trajectory per prompt of the training split"
    assert "'samples': 4" in result.stderr
