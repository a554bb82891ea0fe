"""GSM8K, MATH and JSON-lines tasks on tiny local copies in the hub's layouts: prompt formats, splits, data errors
and answer extraction on realistic and malformed outputs."""

from __future__ import annotations

import json
import os
from itertools import permutations

import pandas as pd
import pytest

from models.errors import ConfigError, InputError
from pipeline.tasks import hub
from pipeline.tasks.base import Example
from pipeline.tasks.gsm8k import GSM8K, flexible_answer, strict_answer
from pipeline.tasks.jsonl import JsonlTask
from pipeline.tasks.minerva_math import MATH, SHOTS, SUBJECTS, TYPES
from tests.conftest import OFFLINE

GSM8K_DOWNLOAD = "huggingface-cli download openai/gsm8k --repo-type dataset --local-dir DIR"


@pytest.fixture(autouse=True)
def fresh_row_cache(monkeypatch):
    """Rows are kept per process; each test starts without any (path null means the same key in every test)."""
    monkeypatch.setattr(hub, "_CACHE", {})


def write_parquet(file, rows):
    file.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(file, index=False)


def write_jsonl(file, rows):
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def gsm8k_rows(count, prefix):
    return [{"question": f"{prefix} question {i}?",
             "answer": f"{prefix} step: {i}+1=<<{i}+1={i + 1}>>{i + 1} apples.\n#### {i + 1}"} for i in range(count)]


def shot(row):
    return f"Question: {row['question']}\nAnswer: {row['answer']}"


@pytest.fixture
def gsm8k_dir(tmp_path):
    """A hub copy whose 503 train rows make a train split of 3 and a validation split of 500."""
    root = tmp_path / "gsm8k"
    write_parquet(root / "main" / "train-00000-of-00001.parquet", gsm8k_rows(503, "train"))
    write_parquet(root / "main" / "test-00000-of-00001.parquet", gsm8k_rows(4, "test"))
    write_parquet(root / "socratic" / "train-00000-of-00001.parquet", gsm8k_rows(600, "socratic"))
    return root


def test_gsm8k_prompt_is_the_harness_few_shot_format(gsm8k_dir):
    task = GSM8K(path=str(gsm8k_dir), num_shots=2)
    train = gsm8k_rows(3, "train")
    question = "Question: test question 0?\nAnswer:"
    allowed = {f"{shot(a)}\n\n{shot(b)}\n\n{question}" for a, b in permutations(train, 2)}
    example = task.examples("test", 1)[0]
    assert example.prompt in allowed
    assert example.prompt.startswith("Question: train question ")
    assert "\nAnswer: train step: " in example.prompt and example.prompt.count("\n\n") == 2
    assert example.answer == "test step: 0+1=<<0+1=1>>1 apples.\n#### 1" and example.final == "1"
    own = task.examples("train", 2)[1]  # train row 1: its shots are rows 0 and 2, never itself
    assert own.prompt in {f"{shot(train[a])}\n\n{shot(train[b])}\n\nQuestion: train question 1?\nAnswer:"
                          for a, b in ((0, 2), (2, 0))}
    assert GSM8K(path=str(gsm8k_dir), num_shots=0).examples("test", 1)[0].prompt == question


def test_gsm8k_examples_are_deterministic_and_seeded(gsm8k_dir):
    first = GSM8K(path=str(gsm8k_dir), num_shots=2).examples("validation", 20)
    assert first == GSM8K(path=str(gsm8k_dir), num_shots=2).examples("validation", 20)
    assert GSM8K(path=str(gsm8k_dir), num_shots=2).examples("validation", 5) == first[:5]
    other_seed = GSM8K(path=str(gsm8k_dir), num_shots=2, seed=7).examples("validation", 20)
    assert [ex.prompt for ex in other_seed] != [ex.prompt for ex in first]
    assert [ex.final for ex in other_seed] == [ex.final for ex in first]
    for index, example in enumerate(GSM8K(path=str(gsm8k_dir), num_shots=2).examples("train", 3)):
        assert example.prompt.count(f"train question {index}?") == 1  # only as the question asked


def test_gsm8k_validation_is_the_last_500_train_rows(gsm8k_dir):
    task = GSM8K(path=str(gsm8k_dir), num_shots=1)
    assert [task.split_size(split) for split in ("train", "validation", "test")] == [3, 500, 4]
    validation = task.examples("validation", 500)
    assert validation[0].prompt.endswith("Question: train question 3?\nAnswer:")
    assert validation[-1].prompt.endswith("Question: train question 502?\nAnswer:")
    assert all("Question: train question 4" not in ex.prompt.rsplit("\n\n", 1)[0] for ex in validation)
    with pytest.raises(ConfigError, match="num_prompts=4: allowed: 1 to 3"):
        task.examples("train", 4)


@pytest.mark.parametrize("layout", ["data/{split}-00000-of-00001.parquet", "{split}/0000.parquet",
                                    "main/gsm8k-{split}.jsonl", "main/{split}.jsonl"])
def test_gsm8k_reads_the_hub_layouts(tmp_path, gsm8k_dir, layout):
    copy = tmp_path / "copy"
    for split, rows in (("train", gsm8k_rows(503, "train")), ("test", gsm8k_rows(4, "test"))):
        file = copy / layout.format(split=split)
        (write_parquet if file.suffix == ".parquet" else write_jsonl)(file, rows)
    assert GSM8K(path=str(copy), num_shots=2).examples("test", 4) == \
        GSM8K(path=str(gsm8k_dir), num_shots=2).examples("test", 4)


def test_gsm8k_reads_a_save_to_disk_directory(tmp_path, gsm8k_dir):
    import datasets

    splits = {"train": gsm8k_rows(503, "train"), "test": gsm8k_rows(4, "test")}
    datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(
        str(tmp_path / "saved"))
    assert GSM8K(path=str(tmp_path / "saved"), num_shots=2).examples("train", 3) == \
        GSM8K(path=str(gsm8k_dir), num_shots=2).examples("train", 3)


def test_missing_data_names_the_download_command(tmp_path):
    missing = str(tmp_path / "nowhere")
    for task, hub_name in ((GSM8K(path=missing), "openai/gsm8k"), (MATH(path=missing), "EleutherAI/hendrycks_math")):
        with pytest.raises(InputError, match="does not exist") as error:
            task.check()
        assert f"huggingface-cli download {hub_name} --repo-type dataset --local-dir DIR" in str(error.value)
        assert "task.path=DIR" in str(error.value)
    GSM8K().check()  # the cache is only looked at when loading
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no test split") as error:
        GSM8K(path=str(tmp_path / "empty")).split_size("test")
    assert GSM8K_DOWNLOAD in str(error.value)


@pytest.fixture(params=["online", "offline"])
def hub_mode(request, monkeypatch) -> bool:
    """Offline mode as the user left it: unset, or set (as on many clusters, and in this suite); returns it.
    The environment and the flags the libraries read from it at import are set alike."""
    import datasets.config
    import huggingface_hub.constants

    offline = request.param == "offline"
    for name in OFFLINE:
        if offline:
            monkeypatch.setenv(name, "1")
        else:
            monkeypatch.delenv(name, raising=False)
    for module, flag in ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
                         (huggingface_hub.constants, "HF_HUB_OFFLINE")):
        monkeypatch.setattr(module, flag, offline)
    return offline


def assert_hub_mode_is(offline: bool) -> None:
    """Loading forced offline mode for itself only: the user's setting is as it was."""
    import datasets.config
    import huggingface_hub.constants

    assert all((os.environ.get(name) == "1") is offline for name in OFFLINE)
    assert datasets.config.HF_HUB_OFFLINE is datasets.config.HF_DATASETS_OFFLINE is offline
    assert huggingface_hub.constants.HF_HUB_OFFLINE is offline


def test_path_null_reads_the_local_cache_offline(tmp_path, monkeypatch, hub_mode):
    import shutil

    import datasets.config

    for split, rows in (("train", gsm8k_rows(503, "train")), ("test", gsm8k_rows(4, "test"))):
        write_parquet(tmp_path / "src" / f"{split}.parquet", rows)
    from datasets.packaged_modules.parquet.parquet import Parquet

    files = {split: str(tmp_path / "src" / f"{split}.parquet") for split in ("train", "test")}
    Parquet(cache_dir=str(tmp_path / "build"), dataset_name="gsm8k", config_name="main", hash="0123abcd",
            data_files=files).download_and_prepare()
    built = next((tmp_path / "build").glob("gsm8k/*/*/0123abcd"))
    shutil.copytree(built, tmp_path / "cache" / "openai___gsm8k" / "main" / "0.0.0" / "0123abcd")  # as a download
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    assert GSM8K(num_shots=2).examples("test", 4) == GSM8K(path=str(tmp_path / "src"), num_shots=2).examples("test", 4)
    assert_hub_mode_is(hub_mode)


def test_an_empty_cache_fails_offline_with_the_download_command(tmp_path, monkeypatch, hub_mode):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(InputError, match="not in the local Hugging Face cache") as error:
        GSM8K().split_size("test")
    assert "load_dataset('openai/gsm8k', 'main', split='test') offline" in str(error.value)
    assert GSM8K_DOWNLOAD in str(error.value)
    assert_hub_mode_is(hub_mode)


def test_the_suite_runs_offline():
    """As on a cluster's compute nodes, no test may reach the hub (nor the command lines they start, which inherit
    the environment)."""
    import datasets.config
    import huggingface_hub.constants

    assert all(os.environ.get(name) == "1" for name in OFFLINE)
    assert datasets.config.HF_HUB_OFFLINE and datasets.config.HF_DATASETS_OFFLINE
    assert huggingface_hub.constants.HF_HUB_OFFLINE


def test_damaged_or_foreign_data_is_named(tmp_path):
    (tmp_path / "parquet" / "main").mkdir(parents=True)
    (tmp_path / "parquet" / "main" / "test-00000-of-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="test-00000-of-00001.parquet: cannot be read as parquet"):
        GSM8K(path=str(tmp_path / "parquet")).split_size("test")
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "test.jsonl").write_text('{"question": "a", "answer": "#### 1"}\n\n{"question": \n')
    with pytest.raises(InputError, match=r"test.jsonl: line 3 is not valid JSON"):
        GSM8K(path=str(tmp_path / "jsonl")).split_size("test")
    write_jsonl(tmp_path / "foreign" / "test.jsonl", [{"problem": "a", "solution": "b"}])
    with pytest.raises(InputError, match="row 0 has no text field 'question'"):
        GSM8K(path=str(tmp_path / "foreign")).split_size("test")
    write_parquet(tmp_path / "small" / "main" / "train-00000-of-00001.parquet", gsm8k_rows(100, "train"))
    with pytest.raises(InputError, match="holds 100 rows, but the last 500 form the validation split"):
        GSM8K(path=str(tmp_path / "small")).split_size("train")


def test_loaded_rows_are_read_once_per_process(gsm8k_dir):
    first = hub.load_split(str(gsm8k_dir), "openai/gsm8k", "main", "test", "task.path")
    (gsm8k_dir / "main" / "test-00000-of-00001.parquet").unlink()
    assert hub.load_split(str(gsm8k_dir), "openai/gsm8k", "main", "test", "task.path") == first


def test_bad_gsm8k_settings_are_named(gsm8k_dir):
    with pytest.raises(ConfigError, match="task.num_shots=-1"):
        GSM8K(num_shots=-1)
    with pytest.raises(ConfigError, match="task.num_shots=5: allowed: 0 to 2"):
        GSM8K(path=str(gsm8k_dir), num_shots=5).examples("test", 1)


@pytest.mark.parametrize("text, strict, flexible, extracted", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72", "72", "72"),
    ("The answer is $1,234.", None, "1234", "1234"),
    ("#### -3.50", "-3.5", "-3.5", "-3.5"),
    ("She pays $1,000.00 in total.\n#### 1,000", "1000", "1000", "1000"),
    ("#### 72.", "72", "72", "72"),
    ("3 apples and 4 pears make 7 fruits", None, "7", "7"),
    ("#### 5\nThen she buys 6 more.", "5", "6", "5"),
    ("I am not sure... maybe ask again.", None, None, None),
    ("", None, None, None),
    ("#### ten", None, None, None),
])
def test_gsm8k_extraction(text, strict, flexible, extracted):
    assert (strict_answer(text), flexible_answer(text), GSM8K().extract_final(text)) == (strict, flexible, extracted)


def test_gsm8k_score_cuts_the_next_question_off():
    task, example = GSM8K(), Example(prompt="", answer="18 eggs.\n#### 18", final="18")
    generated = " 16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars.\n#### 18\n\nQuestion: What is 2+2?\nAnswer: 4"
    assert task.score(example, generated).exact_match
    assert task.score_both(example, generated) == {"strict_match": True, "flexible_match": True}
    assert task.extract_final(generated.replace("#### 18", "so 18")) == "4"  # uncut, the junk's number wins
    assert task.score(example, " so she makes 18 dollars.\n\n\nThe answer is 4").exact_match
    assert task.score_both(example, "#### 17\nno wait, 18") == {"strict_match": False, "flexible_match": True}
    assert not task.score(example, "#### 17\nno wait, 18").exact_match
    assert task.score(example, " 18 eggs.\n#### 18").full_match


def math_solution(subject, index):
    return f"Work for {subject} {index}: halve it to get $\\boxed{{\\dfrac{{{index}}}{{2}}}}$."


@pytest.fixture
def math_dir(tmp_path):
    """A hub copy: 15 train and 2 test rows per subject, so each subject gives one validation row."""
    root = tmp_path / "math"
    for subject in SUBJECTS:
        for split, count in (("train", 15), ("test", 2)):
            rows = [{"problem": f"{subject} {split} problem {i}", "level": "Level 2", "type": TYPES[subject],
                     "solution": math_solution(subject, i)} for i in range(count)]
            write_parquet(root / subject / f"{split}-00000-of-00001.parquet", rows)
    return root


def test_math_prompt_is_the_minerva_four_shot_format(math_dir):
    example = MATH(path=str(math_dir), subset="algebra").examples("test", 1)[0]
    shots = "\n\n".join(f"Problem:\n{problem}\n\nSolution:\n{solution}" for problem, solution in SHOTS)
    assert example.prompt == f"{shots}\n\nProblem:\nalgebra test problem 0\n\nSolution:"
    assert example.prompt.startswith("Problem:\nFind the domain of the expression $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$."
                                     "\n\nSolution:\n")
    assert example.prompt.count("I hope it is correct.\n\nProblem:\n") == 4
    assert [MATH().extract_final(solution) for _, solution in SHOTS] == ["[2,5)", "24", "16", "-\\frac{2}{3}"]
    assert all(solution.endswith(". I hope it is correct.") and "\\boxed{" in solution for _, solution in SHOTS)
    assert example.answer == math_solution("algebra", 0) and example.final == "\\frac{0}{2}"


def test_math_subjects_concatenate_in_order_and_validation_is_every_15th_row(math_dir):
    task = MATH(path=str(math_dir))
    assert [task.split_size(split) for split in ("train", "validation", "test")] == [98, 7, 14]
    test = task.examples("test", 14)
    assert [ex.prompt.rsplit("Problem:\n", 1)[1].split(" test")[0] for ex in test[::2]] == list(SUBJECTS)
    validation = task.examples("validation", 7)
    assert [ex.prompt.rsplit("Problem:\n", 1)[1] for ex in validation] == [
        f"{subject} train problem 14\n\nSolution:" for subject in SUBJECTS]
    assert all(ex.final == "\\frac{14}{2}" for ex in validation)
    assert task.examples("train", 15)[14].prompt.endswith("counting_and_probability train problem 0\n\nSolution:")
    assert MATH(path=str(math_dir), subset="geometry").split_size("test") == 2
    assert task.examples("test", 3) == MATH(path=str(math_dir)).examples("test", 3)


def test_math_reads_one_file_per_split_and_filters_by_type(tmp_path):
    rows = [{"problem": f"p{i}", "solution": math_solution("any", i), "type": TYPES[SUBJECTS[i % 2]]}
            for i in range(6)]
    write_jsonl(tmp_path / "math" / "test.jsonl", rows)
    assert MATH(path=str(tmp_path / "math")).split_size("test") == 6
    algebra = MATH(path=str(tmp_path / "math"), subset="algebra").examples("test", 3)
    assert [ex.prompt.rsplit("Problem:\n", 1)[1] for ex in algebra] == [f"p{i}\n\nSolution:" for i in (0, 2, 4)]
    with pytest.raises(InputError, match="has no row of type 'Geometry'"):
        MATH(path=str(tmp_path / "math"), subset="geometry").split_size("test")


def test_bad_math_subset_is_named():
    with pytest.raises(ConfigError, match="task.subset=calculus: allowed: all, algebra, counting_and_probability"):
        MATH(subset="calculus")


@pytest.mark.parametrize("text, final", [
    ("So $x = 1/2$.\nFinal Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    ("Final Answer: The final answer is $\\frac12$.", "\\frac{1}{2}"),  # the stop string already cut "I hope"
    ("The final answer is: 7", "7"),
    ("Thus the answer is $\\boxed{\\frac{a}{b^{2}}}$.", "\\frac{a}{b^{2}}"),
    ("so it is $\\boxed 5$.", "5"),
    ("\\boxed{3} at first, but in the end \\boxed{4}", "4"),
    ("$\\boxed{\\dfrac{3}{4}}$", "\\frac{3}{4}"),
    ("$\\boxed{\\tfrac34}$", "\\frac{3}{4}"),
    ("$\\boxed{3/4}$", "\\frac{3}{4}"),
    ("The angle is $\\boxed{90^\\circ}$.", "90"),
    ("The angle is $\\boxed{90^{\\circ}}$.", "90"),
    ("The final answer is $90$ degrees. I hope it is correct.", "90"),
    ("The area is $\\boxed{12\\text{ square units}}$.", "12"),
    ("It is $\\boxed{5\\text{ cm}^2}$ in all.", "5"),
    ("The final answer is $\\text{(C)}$. I hope it is correct.", "(C)"),
    ("\\boxed{x = 3}", "3"),
    ("\\boxed{.5}", "0.5"),
    ("\\boxed{\\left( 1, -2 \\right)}", "(1,-2)"),
    ("\\boxed{1,\\!000}", "1000"),
    ("\\boxed{\\$18.50}", "18.5"),
    ("\\boxed{25\\%}", "25"),
    ("\\fbox{7}", "7"),
    ("The final answer is $\\boxed{24}$. I hope it is correct.", "24"),
    ("so \\boxed{\\frac{1}{2}", None),  # braces never close
    ("\\boxed{}", None),
    ("I could not solve this problem.", None),
    ("", None),
])
def test_math_extraction(text, final):
    assert MATH().extract_final(text) == final


def test_math_score_cuts_at_the_stop_strings():
    task, example = MATH(), Example(prompt="", answer="$\\boxed{\\frac{1}{2}}$", final="\\frac{1}{2}")
    generated = ("\nHalf of it: $\\boxed{\\dfrac12}$.\nFinal Answer: The final answer is $\\dfrac{1}{2}$. I hope it is "
                 "correct.\n\nProblem:\nWhat is $\\boxed{3}$?")
    assert task.score(example, generated).exact_match
    assert not task.score(example, "Final Answer: The final answer is $2$. I hope it is correct. \\boxed{\\frac12}") \
        .exact_match


def test_jsonl_one_file_serves_every_split(tmp_path):
    write_jsonl(tmp_path / "mine.jsonl", [{"prompt": "2+2=", "answer": 4}, {"prompt": "Name a colour.",
                                                                             "answer": "Think.\n  red  "}])
    task = JsonlTask(path=str(tmp_path / "mine.jsonl"), stop_strings=["<END>"])
    task.check()
    assert task.examples("test", 2) == task.examples("train", 2) == [
        Example(prompt="2+2=", answer="4", final="4"), Example(prompt="Name a colour.", answer="Think.\n  red",
                                                               final="red")]
    assert [task.split_size(split) for split in ("train", "validation", "test")] == [2, 2, 2]
    assert task.score(task.examples("test", 1)[0], " 4 <END> 5").exact_match
    assert task.score(task.examples("test", 2)[1], "Let me see.\nred\n\n").exact_match
    assert task.extract_final("  \n") is None


def test_jsonl_directory_splits_and_final_field(tmp_path):
    rows = {split: [{"q": f"{split} {i}", "a": f"work\n{i}", "f": str(i)} for i in range(count)]
            for split, count in (("train", 3), ("validation", 2), ("test", 1))}
    for split, split_rows in rows.items():
        write_jsonl(tmp_path / f"{split}.jsonl", split_rows)
    task = JsonlTask(path=str(tmp_path), prompt_field="q", answer_field="a", final_field="f")
    assert [task.split_size(split) for split in ("train", "validation", "test")] == [3, 2, 1]
    assert task.examples("validation", 2)[1] == Example(prompt="validation 1", answer="work\n1", final="1")
    (tmp_path / "test.jsonl").unlink()
    with pytest.raises(InputError, match="test.jsonl: does not exist"):
        JsonlTask(path=str(tmp_path)).split_size("test")


def test_jsonl_damaged_lines_and_bad_settings_are_named(tmp_path):
    file = tmp_path / "test.jsonl"
    file.write_text('{"prompt": "a", "answer": "b"}\n\n{"prompt": "c", "answer": \n')
    with pytest.raises(InputError, match=r"test.jsonl: line 3 is not valid JSON"):
        JsonlTask(path=str(file)).split_size("test")
    file.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(InputError, match=r"test.jsonl: line 2 has no field 'answer'"):
        JsonlTask(path=str(file)).split_size("test")
    file.write_text('["prompt", "answer"]\n')
    with pytest.raises(InputError, match="line 1 is not a JSON object"):
        JsonlTask(path=str(file)).split_size("test")
    with pytest.raises(InputError, match="does not exist"):
        JsonlTask(path=str(tmp_path / "missing.jsonl")).check()
    with pytest.raises(ConfigError, match="task.path=null"):
        JsonlTask(path=None)
    with pytest.raises(ConfigError, match="task.stop_strings"):
        JsonlTask(path=str(file), stop_strings=[""])
