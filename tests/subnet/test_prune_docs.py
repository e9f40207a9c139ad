"""What ``prune``'s docs promise: ratio counts channels (parameters shrink by about (1 - ratio)^2), round_to gives
multiples, and the fine-tuning example in the docstring runs as written (and lowers the loss)."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from regimen.cli import main
from regimen.subnet import prune
from tests.subnet.test_serialize import YourNet


def test_ratio_counts_channels_so_a_conv_between_pruned_layers_keeps_a_quarter():
    model, x = YourNet(width=16), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    before = model.conv1.weight.numel()  # 32 out x 16 in x 3 x 3
    report = prune(model, x, ratio=0.5, scope="uniform")
    assert (model.conv1.out_channels, model.conv1.in_channels) == (16, 8)  # half of the channels on both sides
    assert model.conv1.weight.numel() == before // 4 == 16 * 8 * 3 * 3  # by hand: (1 - 0.5)^2 of the weights
    assert report.params_after < 0.35 * report.params_before  # the whole net: about 75 % of parameters removed


def _docstring_example() -> str:
    block = prune.__doc__.split("::", 1)[1].split("\n\n")[1]
    return "\n".join(line[8:] for line in block.splitlines())


def test_fine_tuning_example_of_the_docstring_runs_and_lowers_the_loss():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = YourNet(width=32)
    example = torch.randn(2, 3, 8, 8, generator=g)
    inputs, labels = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)
    loader = [(inputs, labels)] * 30
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    namespace = {"prune": prune, "model": model, "example": example, "optimizer": optimizer, "loader": loader,
                 "F": F}
    with torch.no_grad():
        model.eval()
        loss_before = F.cross_entropy(model(inputs), labels).item()
    model.train()
    exec(_docstring_example(), namespace)  # noqa: S102 - the documented example, run as written
    report = namespace["report"]
    assert report.params_after < report.params_before
    assert all(w % 8 == 0 for w in (model.stem.out_channels, model.conv1.out_channels))  # round_to=8
    assert all(p is q for p, q in zip(optimizer.param_groups[0]["params"], model.parameters(), strict=True))
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(inputs), labels).item() < loss_before


def test_cli_help_says_ratio_counts_channels_recommends_round_to_and_fine_tuning(capsys):
    try:
        main(["prune", "--help"])
    except SystemExit:
        pass
    text = " ".join(capsys.readouterr().out.split())
    assert "--ratio counts channels" in text and "(1 - ratio)^2" in text
    assert re.search(r"--round-to ROUND_TO keep multiples of this many channels; 8", text)
    assert "fine-tune" in text.lower()
