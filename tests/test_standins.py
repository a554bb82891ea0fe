"""The offline stand-ins for hub dLLMs load through the remote-code path and behave like the real models do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from tests.standins import DREAM_IDS, LLADA_IDS, write_dream_like, write_llada_like

PROMPT = [{"role": "user", "content": "2+2?"}]
LLADA_HEADER = "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
LLADA_GENERATION = "<|start_header_id|>assistant<|end_header_id|>\n\n"
DREAM_TURN = "<|im_start|>user\n2+2?<|im_end|>\n"
DREAM_GENERATION = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("standins")
    return {
        "llada": write_llada_like(root / "llada"),
        "llada_ignoring": write_llada_like(root / "llada_ignoring", honours_attention_mask=False),
        "dream": write_dream_like(root / "dream"),
    }


@pytest.fixture(scope="module")
def loaded(written) -> dict[str, tuple]:
    return {name: (AutoModel.from_pretrained(path, trust_remote_code=True).eval(),
                   AutoTokenizer.from_pretrained(path, trust_remote_code=True)) for name, path in written.items()}


def prompt_ids(tokenizer, text: str = "2+2?") -> torch.Tensor:
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False)
    return torch.tensor(tokenizer(chat, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def logits(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    return model(ids, **kwargs).logits


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        real[i, width - len(row) :] = True
    return ids, real


def test_layout(written):
    for name, stem in (("llada", "llada"), ("dream", "dream")):
        files = {path.name for path in written[name].iterdir()}
        assert {"config.json", f"configuration_{stem}.py", f"modeling_{stem}.py", "model.safetensors",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= files
        config = json.loads((written[name] / "config.json").read_text())
        assert config["auto_map"]["AutoModel"].startswith(f"modeling_{stem}.")
        assert config["auto_map"]["AutoConfig"].startswith(f"configuration_{stem}.")
        assert "chat_template" in json.loads((written[name] / "tokenizer_config.json").read_text())
        for source in (f"configuration_{stem}.py", f"modeling_{stem}.py"):
            imports = [line.split()[1] for line in (written[name] / source).read_text().splitlines()
                       if line.startswith(("import ", "from "))]
            assert {module.split(".")[0] for module in imports} <= {"__future__", "torch", "transformers", ""}


def test_a_fresh_process_loads_them_from_disk(written, tmp_path):
    """The dynamic-module import works from the written files alone, with an empty module cache."""
    script = textwrap.dedent("""
        import json, sys
        import torch
        from transformers import AutoModel, AutoTokenizer
        report = {}
        for path in sys.argv[1:]:
            model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
            chat = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True,
                                                 tokenize=False)
            ids = torch.tensor([tokenizer(chat)["input_ids"]] * 2)
            with torch.no_grad():
                shape = list(model(ids).logits.shape)
            report[path] = {"module": type(model).__module__, "class": type(model).__name__, "fast": tokenizer.is_fast,
                            "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id, "length": len(tokenizer),
                            "mask": model.config.mask_token_id, "vocab": model.config.vocab_size, "chat": chat,
                            "shape": shape, "prompt_length": ids.shape[1]}
        print(json.dumps(report))
    """)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    paths = [str(written["llada"]), str(written["dream"])]
    result = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    llada, dream = report[paths[0]], report[paths[1]]
    assert (tmp_path / "modules").is_dir()
    for entry, ids, vocab in ((llada, LLADA_IDS, 126464), (dream, DREAM_IDS, 152064)):
        assert entry["module"].startswith("transformers_modules.")
        assert entry["fast"] and entry["eos"] == entry["pad"] == ids["eos"] and entry["mask"] == ids["mask"]
        assert entry["vocab"] == vocab and max(ids.values()) < entry["length"] <= vocab
        assert entry["shape"] == [2, entry["prompt_length"], vocab]
    assert llada["class"] == "LLaDAModelLM" and LLADA_HEADER + LLADA_GENERATION in llada["chat"]
    assert dream["class"] == "DreamModel" and DREAM_TURN + DREAM_GENERATION in dream["chat"]


def test_special_tokens_sit_at_the_real_ids(loaded):
    llada_model, llada = loaded["llada"]
    assert llada.convert_tokens_to_ids(["<|mdm_mask|>", "<|endoftext|>", "<|eot_id|>"]) == [
        LLADA_IDS["mask"], LLADA_IDS["eos"], LLADA_IDS["eot"]]
    assert llada.convert_tokens_to_ids(["<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>"]) == [
        126080, 126346, 126347]
    assert (llada.bos_token_id, llada.eos_token_id, llada.pad_token_id) == (126080, LLADA_IDS["eos"], LLADA_IDS["eos"])
    assert llada.mask_token is None  # as upstream: the mask id comes from the model config
    assert llada_model.config.mask_token_id == LLADA_IDS["mask"]
    assert not hasattr(llada_model.config, "max_position_embeddings")  # upstream calls it max_sequence_length

    dream_model, dream = loaded["dream"]
    assert dream.convert_tokens_to_ids(["<|mask|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        DREAM_IDS["mask"], DREAM_IDS["eos"], 151644, 151645]
    assert (dream.mask_token_id, dream.eos_token_id, dream.pad_token_id) == (
        DREAM_IDS["mask"], DREAM_IDS["eos"], DREAM_IDS["eos"])
    assert dream_model.config.mask_token_id == DREAM_IDS["mask"]
    for model, tokenizer in (loaded["llada"], loaded["dream"]):
        assert tokenizer.is_fast and len(tokenizer) <= model.config.vocab_size


def test_chat_templates_and_byte_level_text(loaded):
    _, llada = loaded["llada"]
    _, dream = loaded["dream"]
    llada_chat = llada.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    dream_chat = dream.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert llada_chat == LLADA_HEADER + LLADA_GENERATION
    assert dream_chat.endswith(DREAM_TURN + DREAM_GENERATION)
    assert not llada.apply_chat_template(PROMPT, add_generation_prompt=False, tokenize=False).endswith(
        LLADA_GENERATION)
    assert prompt_ids(llada)[:2].tolist() == [126080, 126346]
    text = "Ünïcode → 42\tand\nnewlines"
    for tokenizer in (llada, dream):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert max(ids) < 256 and tokenizer.decode(ids) == text


def test_logits_cover_the_vocabulary_and_never_pick_the_mask(loaded):
    for name, ids in (("llada", LLADA_IDS), ("dream", DREAM_IDS)):
        model, tokenizer = loaded[name]
        batch = torch.stack([prompt_ids(tokenizer)] * 2)
        batch[:, -4:] = ids["mask"]
        out = logits(model, batch)
        assert out.shape == (*batch.shape, model.config.vocab_size) and torch.isfinite(out).all()
        picks = out.argmax(-1)
        assert (picks != ids["mask"]).all() and tokenizer.decode(picks[0]) is not None
        assert (torch.softmax(out, -1).amax(-1) > 0.2).any()  # confidences vary; decoding has something to pick


def test_llada_like_refuses_position_ids_like_upstream(loaded):
    model, tokenizer = loaded["llada"]
    with pytest.raises(TypeError):
        model(prompt_ids(tokenizer)[None], position_ids=torch.arange(len(prompt_ids(tokenizer)))[None])


def test_llada_like_hides_padded_keys(loaded):
    """Without position ids, left padding shifts every real token's rotary position by the same amount.

    Rotary attention scores depend only on position differences, so once padded keys are hidden the real tokens'
    logits must match the unpadded prompt's; right padding leaves positions unchanged and must match too.
    """
    model, tokenizer = loaded["llada"]
    short, long = prompt_ids(tokenizer, "2+2?"), prompt_ids(tokenizer, "What is 12 times 7?")
    ids, real = left_pad([short, long], LLADA_IDS["eos"])
    padded = logits(model, ids, attention_mask=real.long())
    offset = ids.shape[1] - len(short)
    torch.testing.assert_close(padded[0, offset:], logits(model, short[None])[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(padded[1], logits(model, long[None])[0], atol=1e-4, rtol=1e-4)
    right = torch.cat([short, torch.full((offset,), LLADA_IDS["eos"])])
    keys = torch.arange(len(right)) < len(short)
    torch.testing.assert_close(logits(model, right[None], attention_mask=keys[None])[0, : len(short)],
                               logits(model, short[None])[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        model(ids, attention_mask=real[:, None, None, :])


def test_llada_like_older_variant_ignores_the_mask(loaded):
    model, tokenizer = loaded["llada_ignoring"]
    short, long = prompt_ids(tokenizer, "2+2?"), prompt_ids(tokenizer, "What is 12 times 7?")
    ids, real = left_pad([short, long], LLADA_IDS["eos"])
    padded = logits(model, ids, attention_mask=real.long())
    torch.testing.assert_close(padded, logits(model, ids), atol=0, rtol=0)
    offset = ids.shape[1] - len(short)
    assert (padded[0, offset:] - logits(model, short[None])[0]).abs().max() > 1e-2


def test_dream_like_honours_its_samplers_mask_and_positions(loaded):
    """Dream's sampler left-pads, numbers real tokens from 0 (pads get 1) and builds a [B, 1, L, L] boolean mask."""
    model, tokenizer = loaded["dream"]
    short, long = prompt_ids(tokenizer, "2+2?"), prompt_ids(tokenizer, "What is 12 times 7?")
    ids, real = left_pad([short, long], DREAM_IDS["eos"])
    positions = (real.long().cumsum(-1) - 1).masked_fill(~real, 1)
    mask = real[:, None, None, :] & real[:, None, :, None]
    padded = logits(model, ids, attention_mask=mask, position_ids=positions)
    offset = ids.shape[1] - len(short)
    alone = logits(model, short[None], attention_mask="full")
    torch.testing.assert_close(padded[0, offset:], alone[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(padded[1], logits(model, long[None])[0], atol=1e-4, rtol=1e-4)
    assert torch.isfinite(padded).all()  # fully masked pad rows give zeros, not NaN
    assert (logits(model, ids, attention_mask="full")[0, offset:] - alone[0]).abs().max() > 1e-2
    stretched = torch.arange(len(short))[None] * 3  # changes position differences, unlike a uniform shift
    assert (logits(model, short[None], position_ids=stretched) - alone).abs().max() > 1e-2
    tail = model(short[None], num_logits_to_keep=2, return_cache=True).logits  # unknown kwargs pass, as upstream
    torch.testing.assert_close(tail, alone[:, -2:])
    with pytest.raises(RuntimeError):  # a 2D mask reaches attention unchanged, as upstream: wrong shape for B > 1
        model(ids, attention_mask=real, position_ids=positions)


def test_writing_is_deterministic_in_the_seed(tmp_path):
    first = write_dream_like(tmp_path / "a", seed=3)
    again = write_dream_like(tmp_path / "b", seed=3)
    other = write_dream_like(tmp_path / "c", seed=4)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "modeling_dream.py"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
