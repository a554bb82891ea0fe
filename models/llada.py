"""LLaDA (LLaDA-8B-Instruct, LLaDA-1.5), written by this project, reading the official checkpoints as shipped.

The official modeling code (the hub's ``modeling_llada.py``, an OLMo-derived layout) names its parameters
``model.transformer.{wte, blocks.N.{attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm, ff_proj, up_proj,
ff_out}, ln_f, ff_out}``; this module keeps those names so the checkpoint loads as it is. What the released
checkpoints use is implemented (``block_type=llama``: pre-norm attention and a SiLU-gated MLP, ``ff_proj`` the
gate and ``up_proj`` the up projection; RMS norm computed in float32; rotary embeddings applied in float32 when
``rope_full_precision``; bidirectional attention; optional grouped-query heads, tied output weights, logit
scaling); any other value of those settings is refused by name rather than silently computed differently.

Two deliberate differences from the official forward pass, both invisible on an unpadded prompt:
- the attention mask is honoured (padding keys are hidden; the official code accepts the mask and drops it), and
- positions count real tokens only, so a left-padded prompt gets the positions it has alone.
So batched decoding equals one-prompt-at-a-time decoding, which the official code does not give.

The block cache follows the project's interface (:class:`models.diffusion_lm.BlockCache`): every layer's rotated
keys and values of a whole sequence, recorded by one call and reused by later calls on a slice of it.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from models.attention import KeySpans, attend
from models.diffusion_lm import BlockCache, RMSNorm, rotary, rotate_half, slice_positions
from models.saved_files import LLADA_SUPPORTED as SUPPORTED
from models.saved_files import FieldError, check_llada_config, llada_fields

MODEL_TYPE = "llada"


@dataclass(frozen=True)
class LLaDAConfig:
    """The fields of the official ``config.json`` the forward pass reads, under their official names."""

    d_model: int
    n_heads: int
    n_layers: int
    vocab_size: int
    max_sequence_length: int
    n_kv_heads: int | None = None
    mlp_hidden_size: int | None = None
    mlp_ratio: int = 4
    embedding_size: int | None = None
    rope_theta: float = 10000.0
    rope_full_precision: bool = True
    rms_norm_eps: float = 1e-5
    include_qkv_bias: bool = False
    weight_tying: bool = True  # the official default (LLaDA-8B's config sets false)
    scale_logits: bool = False
    mask_token_id: int = 126336
    eos_token_id: int = 126081

    @classmethod
    def from_dict(cls, config: dict) -> LLaDAConfig:
        """The official config's fields; an unknown architecture, an unsupported setting or a field outside what
        the model can be built from (models/saved_files.py's rules) is a ValueError naming it."""
        if config.get("model_type") != MODEL_TYPE:
            raise ValueError(f"config.json: model_type={config.get('model_type')!r} is not a LLaDA model "
                             f"(expected {MODEL_TYPE!r})")
        given, config = config, llada_fields(config)  # a field left out takes the official default
        for name, allowed in SUPPORTED.items():
            if config[name] not in allowed:
                absent = "" if name in given else " (absent from config.json, so LLaDA's official default)"
                raise ValueError(f"config.json: {name}={config[name]!r}{absent} is not supported by the native LLaDA "
                                 f"implementation (allowed: {', '.join(map(repr, allowed))}); use "
                                 "model.implementation=remote")
        known = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [name for name in required if config.get(name) is None]
        if missing:
            raise ValueError(f"config.json: no {', '.join(missing)} (a LLaDA config names its sizes so)")
        try:
            check_llada_config(config)
        except FieldError as error:
            raise ValueError(f"config.json: {error}") from error
        return cls(**{k: v for k, v in config.items() if k in known and v is not None})

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_size(self) -> int:
        return self.mlp_hidden_size or self.mlp_ratio * self.d_model

    @property
    def max_position_embeddings(self) -> int:
        return self.max_sequence_length


class LLaDALlamaBlock(nn.Module):
    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.config = config
        kv_width = config.kv_heads * config.head_dim
        self.attn_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=config.include_qkv_bias)
        self.k_proj = nn.Linear(config.d_model, kv_width, bias=config.include_qkv_bias)
        self.v_proj = nn.Linear(config.d_model, kv_width, bias=config.include_qkv_bias)
        self.attn_out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.ff_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.ff_proj = nn.Linear(config.d_model, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.hidden_size, bias=False)
        self.ff_out = nn.Linear(config.hidden_size, config.d_model, bias=False)

    def rotate(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.config.rope_full_precision:
            t32 = t.float()
            return (t32 * cos + rotate_half(t32) * sin).to(t.dtype)
        return t * cos.to(t.dtype) + rotate_half(t) * sin.to(t.dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: KeySpans | None,
                past: tuple[torch.Tensor, torch.Tensor] | None, offset: int, record: BlockCache | None
                ) -> torch.Tensor:
        c = self.config
        batch, seq, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(batch, seq, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(batch, seq, c.kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(batch, seq, c.kv_heads, c.head_dim).transpose(1, 2)
        q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        y = attend(q, k, v, key_mask, past, offset, record)
        x = x + self.attn_out(y.transpose(1, 2).reshape(batch, seq, c.d_model))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


@dataclass
class LLaDAOutput(ModelOutput):
    logits: torch.Tensor | None = None
    cache: BlockCache | None = None


class Transformer(nn.Module):
    """``model.transformer``: the official module tree, so parameter names match the checkpoint."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.embedding_size or config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(LLaDALlamaBlock(config) for _ in range(config.n_layers))
        self.ln_f = RMSNorm(config.d_model, config.rms_norm_eps)
        if not config.weight_tying:
            self.ff_out = nn.Linear(config.d_model, config.embedding_size or config.vocab_size, bias=False)


class Body(nn.Module):
    """``model``: holds ``transformer`` as the official ``LLaDAModel`` does."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.transformer = Transformer(config)


class LLaDAModel(nn.Module):
    """The official ``LLaDAModelLM``'s parameters and forward pass, with the loop's block cache."""

    supports_block_cache = True

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Body(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past: BlockCache | None = None, past_offset: int = 0,
                return_cache: bool = False, **_: object) -> LLaDAOutput:
        """As :meth:`models.diffusion_lm.DiffusionLM.forward`: ``attention_mask`` (1 = real token) hides padding
        as keys; positions count real tokens; with ``past``, ``input_ids`` are positions ``past_offset ..`` of a
        sequence whose other keys and values come from the cache."""
        c, t = self.config, self.model.transformer
        key_mask = None if attention_mask is None else KeySpans.of(attention_mask)
        if position_ids is None:
            position_ids = slice_positions(input_ids, attention_mask, past_offset)
        x = t.wte(input_ids)
        cos, sin = rotary(position_ids, c.head_dim, c.rope_theta)
        record = BlockCache() if return_cache else None
        for layer, block in enumerate(t.blocks):
            layer_past = None if past is None else (past.keys[layer], past.values[layer])
            x = block(x, cos, sin, key_mask, layer_past, past_offset, record)
        x = t.ln_f(x)
        logits = F.linear(x, t.wte.weight) if c.weight_tying else t.ff_out(x)
        if c.scale_logits:
            logits = logits / math.sqrt(c.d_model)
        return LLaDAOutput(logits=logits, cache=record)
