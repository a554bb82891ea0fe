"""The native Dream model: official checkpoint layout, config checks, padding, logits shift and block cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.diffusion_lm import BlockCache
from models.dream import DreamConfig, DreamModel

MASK, EOS = 95, 94

# The parameter names the official Dream code gives a one-layer model (and its save_pretrained writes).
OFFICIAL_NAMES_ONE_LAYER = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.q_proj.bias",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.k_proj.bias",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.v_proj.bias",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.mlp.gate_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.post_attention_layernorm.weight",
    "model.norm.weight",
    "lm_head.weight",
]


def official_config(**overrides: object) -> dict:
    """A tiny config.json as the official code writes it (its field names, model_type and extra fields)."""
    config = {
        "architectures": ["DreamModel"], "model_type": "Dream", "vocab_size": 96, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "hidden_act": "silu", "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "rope_scaling": None, "tie_word_embeddings": False, "mask_token_id": MASK, "pad_token_id": EOS,
        "eos_token_id": EOS, "bos_token_id": 93, "use_sliding_window": False, "sliding_window": None,
        "attention_dropout": 0.0, "torch_dtype": "float32", "use_cache": False,
    }
    config.update(overrides)
    return config


def random_model(config: dict, seed: int = 0) -> DreamModel:
    """Random weights everywhere (biases and norms included), large enough that mistakes show in the logits."""
    torch.manual_seed(seed)
    model = DreamModel(DreamConfig.from_dict(config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model.eval()


def write_checkpoint(folder: Path, model: DreamModel, config: dict, shards: int = 1) -> None:
    """Writes config.json and safetensors as the hub ships them; several shards get the index's weight_map."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"))
        return
    names, weight_map = sorted(state), {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        save_file({k: state[k] for k in part}, str(folder / shard))
        weight_map.update({k: shard for k in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def read_checkpoint(folder: Path) -> DreamModel:
    """Loads like the project's loader: a meta-device build filled by a strict, assigning load."""
    index = folder / "model.safetensors.index.json"
    state: dict[str, torch.Tensor] = {}
    if index.exists():
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
    else:
        state = load_file(str(folder / "model.safetensors"))
    with torch.device("meta"):
        model = DreamModel(DreamConfig.from_dict(json.loads((folder / "config.json").read_text())))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> DreamModel:
    return random_model(official_config())


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), EOS, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def test_from_dict_rejects_unknown_model_type() -> None:
    with pytest.raises(ValueError, match="unknown architecture.*'llada'"):
        DreamConfig.from_dict(official_config(model_type="llada"))


def test_from_dict_names_missing_fields() -> None:
    config = official_config()
    del config["hidden_size"], config["vocab_size"]
    with pytest.raises(ValueError, match="vocab_size, hidden_size"):
        DreamConfig.from_dict(config)


@pytest.mark.parametrize("overrides", [{"num_key_value_heads": 3}, {"hidden_size": 30},
                                       {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
                                       {"hidden_act": "gelu"}])
def test_from_dict_rejects_unsupported_configs(overrides: dict) -> None:
    with pytest.raises(ValueError, match="Dream config"):
        DreamConfig.from_dict(official_config(**overrides))


def test_defaults_follow_the_official_config() -> None:
    config = official_config()
    del config["num_key_value_heads"], config["tie_word_embeddings"], config["rope_theta"]
    parsed = DreamConfig.from_dict(config)
    assert (parsed.num_key_value_heads, parsed.tie_word_embeddings, parsed.rope_theta) == (4, False, 10000.0)


def test_state_dict_names_are_the_official_ones() -> None:
    names = list(DreamModel(DreamConfig.from_dict(official_config(num_hidden_layers=1))).state_dict())
    assert names == OFFICIAL_NAMES_ONE_LAYER
    tied = DreamModel(DreamConfig.from_dict(official_config(num_hidden_layers=1, tie_word_embeddings=True)))
    assert list(tied.state_dict()) == OFFICIAL_NAMES_ONE_LAYER[:-1]  # save_pretrained drops the tied head


@pytest.mark.parametrize("shards", [1, 2])
def test_checkpoint_round_trip(tmp_path: Path, model: DreamModel, shards: int) -> None:
    write_checkpoint(tmp_path, model, official_config(), shards)
    loaded = read_checkpoint(tmp_path)
    ids = torch.randint(0, 93, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_tied_head_reads_the_embedding(tmp_path: Path) -> None:
    config = official_config(tie_word_embeddings=True)
    tied = random_model(config)
    write_checkpoint(tmp_path, tied, config)
    loaded = read_checkpoint(tmp_path)
    ids = torch.randint(0, 93, (1, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, tied(ids).logits)
    state = dict(tied.state_dict(), **{"lm_head.weight": tied.model.embed_tokens.weight})
    with torch.device("meta"):
        again = DreamModel(DreamConfig.from_dict(config))
    again.load_state_dict(state, strict=True, assign=True)  # a checkpoint carrying the duplicate head still loads


@torch.no_grad()
def test_logits_are_shifted_right_by_one(model: DreamModel) -> None:
    captured = []
    handle = model.model.norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
    ids = torch.randint(0, 93, (2, 10))
    logits = model(ids).logits
    handle.remove()
    unshifted = model.lm_head(captured[0])  # hidden state i predicts token i + 1
    torch.testing.assert_close(logits[:, 1:], unshifted[:, :-1], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[:, 0], unshifted[:, 0], rtol=0, atol=1e-5)


@torch.no_grad()
def test_left_padded_batch_matches_unbatched(model: DreamModel) -> None:
    rows = [torch.randint(0, 93, (n,)).tolist() for n in (5, 11, 8)]
    ids, mask = left_padded(rows)
    batched = model(ids, attention_mask=mask).logits
    for i, row in enumerate(rows):
        alone = model(torch.tensor([row])).logits[0]
        # the first real position's logit comes from a padding slot in the batch: compare the predicted ones
        torch.testing.assert_close(batched[i, -len(row) + 1 :], alone[1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_cached_block_logits_equal_full_pass(model: DreamModel, padded: bool) -> None:
    rows = [torch.randint(0, 93, (n,)).tolist() + [MASK] * 16 for n in ((6, 9) if padded else (9, 9))]
    ids, mask = left_padded(rows)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    attention = mask if padded else None
    full = model(ids, attention_mask=attention, return_cache=True)
    assert isinstance(full.cache, BlockCache) and len(full.cache.keys) == 2
    assert full.cache.keys[0].shape[1] == 2  # stored before the GQA repeat: num_key_value_heads
    for start in (9, 17):
        for stop in (ids.shape[1], start + 8):  # prefix cache (block..end) and dual cache (block only)
            kwargs = {"position_ids": positions[[1, 0], start:stop]} if padded else {}
            past = full.cache.select(torch.tensor([1, 0]))
            out = model(ids[[1, 0], start:stop], attention_mask=None if attention is None else attention[[1, 0]],
                        past=past, past_offset=start, **kwargs)
            torch.testing.assert_close(out.logits, full.logits[[1, 0], start:stop], rtol=1e-5, atol=1e-5)


def test_cache_without_tokens_is_refused(model: DreamModel) -> None:
    ids = torch.randint(0, 93, (1, 12))
    with torch.no_grad():
        cache = model(ids, return_cache=True).cache
        with pytest.raises(ValueError, match="token ids"):
            model(ids[:, 6:], past=BlockCache(cache.keys, cache.values), past_offset=6)


def test_the_loader_reads_a_sharded_official_dream_checkpoint(tmp_path: Path) -> None:
    from models.checkpoint import load_native
    from tests.standins import write_dream_official

    folder = write_dream_official(tmp_path / "dream", shards=3)
    loaded = load_native(folder, torch.bfloat16, torch.device("cpu"))
    assert isinstance(loaded, DreamModel) and all(p.dtype == torch.bfloat16 for p in loaded.parameters())


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_the_decoding_loop_runs_the_native_dream_with_each_cache(tmp_path: Path, cache: str) -> None:
    from tests.standins import write_dream_official
    from tests.test_cli import run_cli

    folder = write_dream_official(tmp_path / "dream")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                               for i in range(6)))
    result = run_cli("stage=evaluate", "model=dream_7b_instruct", f"model.path={folder}", "task=jsonl",
                     f"task.path={prompts}", "task.chat_template=true", "eval.num_prompts=6", "decode=threshold",
                     "decode.eotp=true", "decode.gen_length=16", "decode.block_length=8", f"decode.cache={cache}",
                     f"output_dir={tmp_path / 'out'}", "progress=false", "logger=none")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stdout and "ignores the attention mask" not in result.stderr
