"""The deployable network normalises inside; a bundle's labels and preprocessing travel with it."""

import pytest
import torch
from torch import nn

from effnet.deploy import bundle
from effnet.errors import UserError
from effnet.preprocessing import Preprocessing


def test_uint8_in_normalised_inside_the_graph():
    seen = {}

    class Spy(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.mean((2, 3))

    net = bundle.Uint8Classifier(Spy(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    net(torch.full((1, 3, 4, 4), 255, dtype=torch.uint8))
    assert torch.allclose(seen["x"], torch.full((1, 3, 4, 4), (1 - 0.5) / 0.25))


def test_meta_round_trips_and_a_folder_without_it_is_one_line(tmp_path):
    prep = Preprocessing(64, 0.9, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    bundle.write_meta(tmp_path, prep, ["cat", "dog"])
    assert bundle.read_meta(tmp_path) == (prep, ["cat", "dog"])
    with pytest.raises(UserError, match="not an effnet export bundle"):
        bundle.read_meta(tmp_path / "elsewhere")
