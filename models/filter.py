"""Filters: tiny networks from a block's per-position features to one logit per position.

``architecture="mlp"`` is the Learn2PD filter: with the paper's settings (features = confidence only, block 32, 2
layers, hidden = block length) it is Linear(32 -> 32), ReLU, Linear(32 -> 32): 2,112 parameters, tied to the
block length it was trained at. ``architecture="transformer"`` sees the block as a set of positions: each
position's features projected to ``hidden_size``, ``num_layers`` pre-norm self-attention layers over the block
(every position attends to every other: one early commit's effect on the rest is visible), one logit per
position; where a position sits comes from the ``position`` feature (its index over the block's width), so one
network serves blocks of any length.

``speed_conditioned=True`` adds a speed input (the reinforced policy's knob, the reward's speed weight it was
trained for): each logit becomes ``base + speed * softplus(speed_head(...))``, non-decreasing in the speed at every
position, so a faster setting commits a superset of what a slower one commits from the same state.

A description's fields and a saved filter's files are checked by :mod:`models.saved_files`, the rules the
pre-flight validation reads too, so a stage loading a saved filter refuses a bad one in the same one line.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from models.saved_files import check_filter_fields, check_saved_filter, filter_width


@dataclass(frozen=True)
class FilterConfig:
    block_length: int = 32  # the block length it was trained at
    features: tuple[str, ...] = ("confidence",)
    num_layers: int = 2
    hidden_size: int | None = None  # None: the block length (mlp, as in the paper) or 32 (transformer)
    threshold: float | None = None  # the decode threshold chosen on validation for a target precision, if any
    architecture: str = "mlp"
    num_heads: int = 4  # transformer: attention heads (dividing hidden_size)
    speed_conditioned: bool = False  # reads a speed (the reinforced policy's knob) besides the features
    speed: float | None = None  # conditioned: the speed decodes use unless told one (chosen on held-out prompts)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        check_filter_fields(asdict(self))  # a FieldError (ValueError) naming the field

    @property
    def width(self) -> int:
        return filter_width(asdict(self))

    @property
    def any_block_length(self) -> bool:
        """Whether the network reads blocks of any length (the transformer) or only its training length."""
        return self.architecture == "transformer"


class BlockFilter(nn.Module):
    """``[n, B, F]`` features -> ``[n, B]`` logits; the whole block is seen at once, as in the paper."""

    def __init__(self, config: FilterConfig) -> None:
        super().__init__()
        self.config = config
        if config.architecture == "transformer":
            d = config.width
            self.embed = nn.Linear(len(config.features), d)
            layer = nn.TransformerEncoderLayer(d, config.num_heads, dim_feedforward=2 * d, dropout=0.0,
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, 1)
            speed_in, speed_out = d, 1
        else:
            width_in = config.block_length * len(config.features)
            widths = [width_in] + [config.width] * (config.num_layers - 1) + [config.block_length]
            layers: list[nn.Module] = []
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
                layers.append(nn.Linear(a, b))
                if i < config.num_layers - 1:
                    layers.append(nn.ReLU())
            self.net = nn.Sequential(*layers)
            speed_in, speed_out = width_in, config.block_length
        if config.speed_conditioned:
            # zero weights, softplus(bias) = 1: at first the speed shifts every logit alike, a threshold knob
            self.speed_head = nn.Linear(speed_in, speed_out)
            with torch.no_grad():
                self.speed_head.weight.zero_()
                self.speed_head.bias.fill_(math.log(math.e - 1))

    def forward(self, features: torch.Tensor, speed: torch.Tensor | None = None) -> torch.Tensor:
        """``[n, B]`` logits; ``speed`` (``[n]``, one per row) is required by a speed-conditioned filter and
        refused by any other."""
        if self.config.speed_conditioned and speed is None:
            raise ValueError("this filter is speed-conditioned: give the speed to decode at (decode.speed)")
        if not self.config.speed_conditioned and speed is not None:
            raise ValueError("this filter is not speed-conditioned: it takes no speed")
        n, width, _ = features.shape
        if self.config.any_block_length:
            hidden = self.norm(self.blocks(self.embed(features)))
            logits = self.head(hidden).squeeze(-1)
            slope_in = hidden
        else:
            if width != self.config.block_length:
                raise ValueError(
                    f"this filter was trained for block_length={self.config.block_length}, got a block of {width}"
                )
            slope_in = features.reshape(n, -1)
            logits = self.net(slope_in)
        if speed is None:
            return logits
        slope = F.softplus(self.speed_head(slope_in)).reshape(n, -1)
        return logits + speed.to(logits)[:, None] * slope

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "filter.safetensors")
        (directory / "filter.json").write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> BlockFilter:
        """The filter saved in ``directory``; a file that is missing, damaged or disagrees with the other is an
        InputError naming it and its field or tensor, before any tensor is read."""
        directory = Path(directory)
        network = cls(FilterConfig(**check_saved_filter(directory)))
        network.load_state_dict(load_file(directory / "filter.safetensors"))
        return network.to(device).eval()


def speed_conditioned(network: BlockFilter) -> BlockFilter:
    """A filter without a speed input (a supervised one) with its weights copied and a fresh speed head added, so
    at speed ``s`` it gives its own logits plus ``s``: the reinforced policy's warm start."""
    if network.config.speed_conditioned:
        raise ValueError("this filter is speed-conditioned already")
    parameter = next(network.parameters())
    conditioned = BlockFilter(replace(network.config, speed_conditioned=True)).to(parameter)
    missing, unexpected = conditioned.load_state_dict(network.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("speed_head.") for name in missing)
    return conditioned.train(network.training)
