"""The Learn2PD filter: a tiny MLP from a block's per-position features to one logit per position.

With the paper's settings (features = confidence only, block 32, 2 layers, hidden = block length) it is
Linear(32 -> 32), ReLU, Linear(32 -> 32): 2,112 parameters. Extra features widen the input, not the output.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


@dataclass(frozen=True)
class FilterConfig:
    block_length: int = 32
    features: tuple[str, ...] = ("confidence",)
    num_layers: int = 2
    hidden_size: int | None = None  # None: the block length, as in the paper
    threshold: float | None = None  # the decode threshold chosen on validation for a target precision, if any

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"filter.num_layers={self.num_layers}: allowed: an integer >= 1")
        object.__setattr__(self, "features", tuple(self.features))


class BlockFilter(nn.Module):
    """``[n, B, F]`` features -> ``[n, B]`` logits; the whole block is seen at once, as in the paper."""

    def __init__(self, config: FilterConfig) -> None:
        super().__init__()
        self.config = config
        width_in = config.block_length * len(config.features)
        hidden = config.hidden_size or config.block_length
        widths = [width_in] + [hidden] * (config.num_layers - 1) + [config.block_length]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < config.num_layers - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, width, _ = features.shape
        if width != self.config.block_length:
            raise ValueError(
                f"this filter was trained for block_length={self.config.block_length}, got a block of {width}"
            )
        return self.net(features.reshape(n, -1))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "filter.safetensors")
        (directory / "filter.json").write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> BlockFilter:
        directory = Path(directory)
        if not (directory / "filter.json").exists():
            raise FileNotFoundError(f"no saved filter in {directory} (expected filter.json and filter.safetensors)")
        network = cls(FilterConfig(**json.loads((directory / "filter.json").read_text())))
        network.load_state_dict(load_file(directory / "filter.safetensors"))
        return network.to(device).eval()
