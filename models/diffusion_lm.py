"""A small LLaDA-style masked-diffusion transformer, readable top to bottom.

Bidirectional self-attention (no causal mask), rotary positions, RMSNorm and SwiGLU, and a mask token whose
predictions are the model's denoising guesses. It is a transformers ``PreTrainedModel`` returning ``.logits``
like a hub dLLM, so the decoder drives it and LLaDA the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from models.attention import BlockCache, KeySpans, attend


class DiffusionLMConfig(PretrainedConfig):
    model_type = "tiny_mdlm"

    def __init__(
        self,
        vocab_size: int = 32,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 384,
        max_position_embeddings: int = 512,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        mask_token_id: int = 1,
        eos_token_id: int = 0,
        bos_token_id: int = 2,
        pad_token_id: int = 0,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.mask_token_id = mask_token_id
        super().__init__(
            eos_token_id=eos_token_id, bos_token_id=bos_token_id, pad_token_id=pad_token_id, **kwargs
        )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rotary(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos/sin tables [batch, 1, seq, head_dim] at explicit positions, so left padding never shifts a
    prompt's positions. Recomputed per call rather than kept as a buffer: models built on the meta device
    (``from_pretrained``, :mod:`models.checkpoint`) would leave a non-persistent buffer uninitialised."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device)
    inv_freq = 1.0 / (theta ** (exponents / head_dim))
    angles = position_ids.float()[..., None] * inv_freq  # [batch, seq, head_dim / 2]
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # [batch, 1, seq, head_dim]
    return angles.cos(), angles.sin()


def slice_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, offset: int) -> torch.Tensor:
    """Position ids of ``input_ids``, the positions ``offset ..`` of a sequence: counting real tokens only when
    ``attention_mask`` (over the whole sequence, 1 = real token) is given, else ``offset, offset + 1, ...``."""
    if attention_mask is None:
        return torch.arange(offset, offset + input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, offset : offset + input_ids.shape[1]]


@dataclass
class DiffusionLMOutput(ModelOutput):
    logits: torch.Tensor | None = None
    cache: BlockCache | None = None


class Attention(nn.Module):
    def __init__(self, config: DiffusionLMConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, key_mask, past: tuple[torch.Tensor, torch.Tensor] | None = None, offset: int = 0,
                record: BlockCache | None = None):
        """With ``past``, ``x`` holds only positions ``offset..offset+seq`` and attends to cached keys elsewhere."""
        batch, seq, _ = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        y = attend(q, k, v, key_mask, past, offset, record)
        return self.out(y.transpose(1, 2).reshape(batch, seq, -1))


class SwiGLU(nn.Module):
    def __init__(self, config: DiffusionLMConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: DiffusionLMConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x, cos, sin, key_mask, past=None, offset: int = 0, record: BlockCache | None = None):
        x = x + self.attn(self.attn_norm(x), cos, sin, key_mask, past, offset, record)
        return x + self.mlp(self.mlp_norm(x))


class DiffusionLM(PreTrainedModel):
    """Predicts every position's token at once; the decoder reads the predictions at mask positions."""

    config_class = DiffusionLMConfig
    base_model_prefix = "model"
    supports_block_cache = True  # the decoder's prefix/dual cache modes drive forward(past=..., return_cache=...)
    _no_split_modules = ["Block"]

    def __init__(self, config: DiffusionLMConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past: BlockCache | None = None,
        past_offset: int = 0,
        return_cache: bool = False,
        **_: object,
    ) -> DiffusionLMOutput:
        """``attention_mask`` (1 = real token) hides padding as keys; positions count real tokens only.

        With ``past``, ``input_ids`` are the positions ``past_offset ..`` of a sequence whose other keys and values
        come from the cache (``attention_mask`` then covers the whole sequence); ``return_cache`` records them.
        """
        key_mask = None if attention_mask is None else KeySpans.of(attention_mask)
        if position_ids is None:
            position_ids = slice_positions(input_ids, attention_mask, past_offset)
        x = self.embed(input_ids)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = (t.to(x.dtype) for t in rotary(position_ids, head_dim, self.config.rope_theta))
        record = BlockCache() if return_cache else None
        for layer, block in enumerate(self.blocks):
            layer_past = None if past is None else (past.keys[layer], past.values[layer])
            x = block(x, cos, sin, key_mask, layer_past, past_offset, record)
        return DiffusionLMOutput(logits=self.lm_head(self.norm(x)), cache=record)


AutoConfig.register(DiffusionLMConfig.model_type, DiffusionLMConfig, exist_ok=True)
AutoModel.register(DiffusionLMConfig, DiffusionLM, exist_ok=True)
