"""The embedded model and tokenizer round-trip through from_pretrained; the task's splits and scorer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from models import DiffusionLM, DiffusionLMConfig
from pipeline.learning.pretrain import masked_diffusion_loss
from pipeline.tasks import ChainedAddition
from pipeline.tasks.base import Example
from pipeline.tasks.prompts import decode_answer, encode_prompt, training_batch


def test_model_and_tokenizer_round_trip(tmp_path, tokenizer):
    torch.manual_seed(1)
    micro_model = DiffusionLM(DiffusionLMConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=64)).eval()
    micro_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = torch.tensor([encode_prompt(loaded_tokenizer, Example("12+34+5=", "", ""))])
    assert ids.tolist() == [encode_prompt(tokenizer, Example("12+34+5=", "", ""))]
    assert loaded_tokenizer.is_fast and loaded_tokenizer.mask_token_id == micro_model.config.mask_token_id
    assert torch.equal(model(ids).logits, micro_model(ids).logits)
    assert decode_answer(loaded_tokenizer, loaded_tokenizer("1+2=3#3")["input_ids"] + [0, 5]) == "1+2=3#3"


def test_left_padding_does_not_change_a_prompt_s_logits(micro_model):
    ids = torch.tensor([[2, 4, 13, 5, 16, 1, 1, 1]])
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    attention = torch.cat([torch.zeros(1, 3), torch.ones(1, 8)], dim=1)
    alone = micro_model(ids).logits
    with_pads = micro_model(padded, attention_mask=attention).logits[:, 3:]
    assert torch.allclose(alone, with_pads, atol=1e-5)


def test_splits_are_seeded_disjoint_and_varied():
    task = ChainedAddition()
    test = task.examples("test", 300)
    assert test == task.examples("test", 300)
    train = {ex.prompt for ex in task.examples("train", 3000)}
    assert not train & {ex.prompt for ex in test}
    lengths = [len(ex.answer) for ex in test]
    assert min(lengths) == 16 and max(lengths) == 55
    assert len({ex.prompt for ex in test}) == len(test)


def test_answers_are_worked_chains_and_the_scorer_reads_the_final_answer():
    task = ChainedAddition()
    answer, final = task.solve(48, 7, 2)
    assert (answer, final) == ("2:048+07=055,1:055+07=062#062", "062")
    example = task.examples("test", 1)[0]
    assert task.score(example, example.answer).exact_match and task.score(example, example.answer).full_match
    wrong_steps = example.answer.replace(",", ";", 1) if "," in example.answer else "x" + example.answer
    assert task.score(example, wrong_steps).exact_match and not task.score(example, wrong_steps).full_match
    assert not task.score(example, example.answer + "1").exact_match
    assert task.extract_final("no answer") is None


def test_a_tight_window_ends_one_end_of_text_after_the_longest_answer(tokenizer):
    examples = ChainedAddition().examples("train", 8)
    batch = training_batch(tokenizer, examples, window=0)
    longest = max(len(ex.answer) for ex in examples)
    assert int(batch["answer_region"].sum(1)[0]) == longest + 1
    assert (batch["input_ids"][:, -1] == tokenizer.eos_token_id).all()


@pytest.mark.parametrize("settings, named", [({"min_steps": 3, "max_steps": 2}, "task.min_steps"),
                                             ({"max_steps": 10}, "task.max_steps"),
                                             ({"max_operand": 100}, "task.max_operand")])
def test_bad_task_settings_are_named(settings, named):
    with pytest.raises(ValueError, match=named):
        ChainedAddition(**settings)


def test_the_training_loss_never_masks_the_prompt(micro_model, tokenizer):
    batch = training_batch(tokenizer, ChainedAddition().examples("train", 8), window=64)
    assert batch["input_ids"].shape[1] == batch["answer_region"].shape[1]
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs.get("input_ids", args[0] if args else None))

    handle = micro_model.register_forward_pre_hook(record, with_kwargs=True)
    generator = torch.Generator().manual_seed(0)
    loss = masked_diffusion_loss(micro_model, batch, tokenizer.mask_token_id, generator=generator)
    handle.remove()
    noisy = seen[0]
    assert torch.isfinite(loss) and loss > 0
    assert not (noisy[~batch["answer_region"]] == tokenizer.mask_token_id).any()
    assert (noisy[batch["answer_region"]] == tokenizer.mask_token_id).any()
