"""``filter=transformer1``: a block-level policy network, one self-attention layer over the block's positions, that
trains with the supervised recipe like the MLP filters and serves blocks of any length."""

from __future__ import annotations

import pytest
import torch

from models.filter import BlockFilter, FilterConfig
from tests.conftest import compose_config
from tests.test_cli import run_cli

FEATURES = ("confidence", "entropy", "position")


def test_one_network_reads_blocks_of_any_length_and_saves_whole(tmp_path):
    torch.manual_seed(0)
    network = BlockFilter(FilterConfig(block_length=16, features=FEATURES, num_layers=1, hidden_size=16,
                                       architecture="transformer", num_heads=2)).eval()
    for width in (8, 16, 32, 64):
        assert network(torch.rand(3, width, len(FEATURES))).shape == (3, width)
    block = torch.rand(2, 16, len(FEATURES))
    network.save(tmp_path / "filter")
    again = BlockFilter.load(tmp_path / "filter")
    assert again.config == network.config and torch.equal(again(block), network(block))
    changed = block.clone()
    changed[:, 0, 0] += 0.5  # one position's confidence moves: every position's logit may move (attention)
    assert (network(changed)[:, 1:] != network(block)[:, 1:]).any()
    mlp = BlockFilter(FilterConfig(block_length=16, features=FEATURES))
    with pytest.raises(ValueError, match="trained for block_length=16"):
        mlp(torch.rand(1, 32, len(FEATURES)))


@pytest.mark.parametrize(("overrides", "message"), [
    (["filter.num_heads=5"], "filter.num_heads=5: allowed: a divisor of the hidden size (32)"),
    (["filter.features=[confidence,entropy]"], "filter.features=['confidence', 'entropy']: a transformer filter"),
    (["filter.architecture=lstm"], "filter.architecture=lstm: allowed: mlp, transformer"),
])
def test_bad_transformer_settings_are_refused_before_the_start(tmp_path, overrides, message):
    result = run_cli("+experiment=micro", "filter=transformer1", *overrides, "stage=train_filter",
                     f"output_dir={tmp_path / 'out'}", "logger=none", "progress=false")
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr[-2000:]


def test_a_trained_transformer_filter_decodes_blocks_it_was_not_trained_at(tmp_path):
    """Trained on the micro experiment's blocks of 8, then used at 16 and at full diffusion (one block of 32)."""
    out = tmp_path / "out"
    trained = run_cli("+experiment=micro", "filter=transformer1", "stage=train_filter", f"output_dir={out}",
                      "logger=none", "progress=false", timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    folder = next((out / "artifacts" / "train_filter").glob("*/filter"))
    for block in (16, 32):
        result = run_cli("+experiment=micro", "stage=evaluate", "decode=filter", f"decode.filter_path={folder}",
                         "decode.threshold=0.9", f"decode.block_length={block}", "eval.num_prompts=8",
                         f"output_dir={out}", "logger=none", "progress=false")
        assert result.returncode == 0, result.stderr[-3000:]
        nfe = float(result.stdout.split("NFE")[1].split("mean")[1].split(",")[0])
        assert 1 <= nfe < 32, "parallel: fewer passes than one token per step"
    cfg = compose_config(["+experiment=micro", "filter=transformer1", "sweep.block_length=32"])
    from pipeline.configuration.validation import validate

    assert validate(cfg) == ["trajectories", "train_filter", "sweep", "aggregate"], \
        "a transformer filter is not tied to the trajectories' block length"
