"""A native Dream (Dream-v0-Instruct-7B) model that reads the official checkpoint as the hub ships it.

Dream is a Qwen2-style decoder (GQA, biased q/k/v projections, rotary positions, RMSNorm, SwiGLU) run with
bidirectional attention. It was initialised from an autoregressive model, so the hidden state at position ``i``
predicts the token at ``i + 1``; Dream's own sampler shifts the logits right by one. This module applies that shift
inside ``forward`` so that, like the embedded :class:`~models.diffusion_lm.DiffusionLM`, ``logits[:, i]`` is the
prediction for position ``i`` and the project's decoding loop drives both the same way. Parameter names equal the
official ones, so ``load_state_dict(strict=True)`` takes the hub's safetensors unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from models.attention import BlockCache, KeySpans, attend
from models.diffusion_lm import RMSNorm, rotary, rotate_half, slice_positions
from models.saved_files import FieldError, check_dream_config

MODEL_TYPE = "Dream"  # config.json's "model_type" for the official checkpoints
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


@dataclass
class DreamConfig:
    """The official config.json fields the forward pass needs; defaults are the official configuration's."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None  # None: one key/value head per query head, as the official config
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    mask_token_id: int = 151666
    pad_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = None
    bos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict) -> DreamConfig:
        """Builds the config from an official config.json; unknown fields (auto_map, torch_dtype ...) are ignored, a
        field outside what the model can be built from (models/saved_files.py's rules: sizes, heads, the plain
        rotary positions and SiLU it computes, token ids) is a ValueError naming it."""
        model_type = d.get("model_type")
        if model_type != MODEL_TYPE:
            raise ValueError(f"unknown architecture: model_type {model_type!r} is not {MODEL_TYPE!r}")
        missing = [name for name in _REQUIRED if d.get(name) is None]
        if missing:
            raise ValueError(f"Dream config.json lacks required field(s): {', '.join(missing)}")
        try:
            check_dream_config(d)
        except FieldError as error:
            raise ValueError(f"Dream config: {error}") from error
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names and v is not None}
        rope = d.get("rope_parameters")  # newer transformers write the rotary settings here as well
        if isinstance(rope, dict):
            values.setdefault("rope_theta", rope.get("rope_theta", DreamConfig.rope_theta))
            values.setdefault("rope_scaling", rope)
        return cls(**values)


@dataclass
class DreamBlockCache(BlockCache):
    """A :class:`BlockCache` that also keeps the token ids of the pass that recorded it.

    A cached call on the slice ``offset..`` needs the hidden state at ``offset - 1`` for its first logit (Dream's
    right shift), so it re-runs that one position, whose token it reads here.
    """

    tokens: torch.Tensor | None = None  # [batch, seq]

    def select(self, rows: torch.Tensor) -> DreamBlockCache:
        tokens = None if self.tokens is None else self.tokens[rows]
        return DreamBlockCache([k[rows] for k in self.keys], [v[rows] for v in self.values], tokens)


@dataclass
class DreamOutput(ModelOutput):
    logits: torch.Tensor | None = None
    cache: DreamBlockCache | None = None


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: KeySpans | None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None, offset: int = 0,
                record: BlockCache | None = None) -> torch.Tensor:
        """With ``past``, ``x`` holds positions ``offset..offset+seq``; every other key and value is the cached one."""
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        y = attend(q, k, v, key_mask, past, offset, record)
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, -1))


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.self_attn = DreamAttention(config)
        self.mlp = DreamMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, key_mask, past=None, offset: int = 0, record: BlockCache | None = None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, key_mask, past, offset, record)
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamBackbone(nn.Module):
    """Holds the official ``model.*`` parameters (embed_tokens, layers, norm)."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamModel(nn.Module):
    """Dream with logits aligned to the positions they predict, and the decoding loop's block cache.

    Alignment: the official model's hidden state ``i`` predicts token ``i + 1``; the official sampler shifts the
    logits right by one and lets position 0 keep its own. ``forward`` does the same, so ``logits[:, i]`` comes from
    hidden state ``i - 1`` (``i >= 1``).

    Cached calls: a slice starting at ``past_offset > 0`` needs hidden state ``past_offset - 1`` for its first logit.
    Fast-dLLM's block generation shifts within the slice instead, so the block's first position gets its own,
    misaligned logit; it gets away with that only because its full pass at each block start commits the block's
    first token before any cached step. The project's loop makes no such guarantee, so this model re-runs one extra
    position: the slice ``past_offset - 1 .. past_offset + L``, reading that position's token from the cache (which
    therefore records the token ids) and dropping the extra logit. Its query sees the current slice, as it would in
    a full pass, and its freshly computed key and value stand in for the cached ones during the call, so a cache
    recorded on the same input reproduces the full pass's logits exactly, at the cost of one more query position.

    With ``tie_word_embeddings`` the output head reuses ``model.embed_tokens.weight`` and owns no parameter, so the
    state dict has no ``lm_head.weight``, as the official ``save_pretrained`` writes it; a checkpoint that does carry
    the (duplicate) tied head has it dropped on load.
    """

    supports_block_cache = True

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DreamBackbone(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size,
                                                                          bias=False)
        if config.tie_word_embeddings:
            self.register_load_state_dict_pre_hook(_drop_tied_head)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of final (normalised) hidden states, through the tied embedding when configured."""
        if self.lm_head is None:
            return F.linear(hidden, self.model.embed_tokens.weight)
        return self.lm_head(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past: BlockCache | None = None,
        past_offset: int = 0,
        return_cache: bool = False,
        **_: object,
    ) -> DreamOutput:
        """``attention_mask`` [batch, total] (1 = real token) hides padding as keys; positions count real tokens.

        With ``past`` (a cache recorded by ``return_cache=True``), ``input_ids`` are positions ``past_offset ..`` of
        a sequence whose other keys and values come from the cache; ``attention_mask`` then covers the whole
        sequence, and explicit ``position_ids`` cover the slice only.
        """
        extra = past is not None and past_offset > 0  # re-run position past_offset - 1 for the first logit
        start = past_offset - 1 if extra else past_offset
        if extra:
            tokens = getattr(past, "tokens", None)
            if tokens is None:
                raise ValueError("Dream needs the token ids in its cache: record it with DreamModel(return_cache=True)")
            input_ids = torch.cat((tokens[:, start : start + 1].to(input_ids.device), input_ids), dim=1)
            if position_ids is not None:
                position_ids = torch.cat(((position_ids[:, :1] - 1).clamp(min=0), position_ids), dim=1)
        if position_ids is None:
            position_ids = slice_positions(input_ids, attention_mask, start)
        key_mask = None if attention_mask is None else KeySpans.of(attention_mask)
        x = self.model.embed_tokens(input_ids)
        cos, sin = (t.to(x.dtype) for t in rotary(position_ids, self.config.head_dim, self.config.rope_theta))
        record = DreamBlockCache(tokens=input_ids) if return_cache else None
        for layer, block in enumerate(self.model.layers):
            layer_past = None if past is None else (past.keys[layer], past.values[layer])
            x = block(x, cos, sin, key_mask, layer_past, start, record)
        x = self.model.norm(x)
        if extra:
            shifted = x[:, :-1]  # hidden states past_offset - 1 .. past_offset + L - 1
            if record is not None:  # record only the requested slice, as the embedded model does
                record = DreamBlockCache([k[:, :, 1:] for k in record.keys], [v[:, :, 1:] for v in record.values],
                                         input_ids[:, 1:])
        else:
            shifted = torch.cat((x[:, :1], x[:, :-1]), dim=1)  # position 0 keeps its own prediction
        return DreamOutput(logits=self.head(shifted), cache=record)


def _drop_tied_head(module, state_dict, prefix, *_args) -> None:
    """A tied checkpoint may still carry the duplicate head; the tied model reads the embedding instead."""
    state_dict.pop(prefix + "lm_head.weight", None)
