"""The dataset and its sampler: class-weighted draws, and a transform that refuses its random draw."""

import torch

from effnet.data import folders
from effnet.data.balance import sample_weights
from effnet.data.dataset import EpochSampler, ImageList
from tests.helpers import make_images


def test_weighted_sampler_evens_out_the_classes(tmp_path):
    root = make_images(tmp_path / "skewed", {"ant": 30, "bee": 3})
    split = folders.discover(root, 0.1, 0)
    sampler = EpochSampler(len(split.train), seed=0, weights=sample_weights(split.train))
    labels = [split.train[i][1] for epoch in range(20) for i, _ in (sampler.set_epoch(epoch) or sampler)]
    share = sum(labels) / len(labels)
    assert 0.4 < share < 0.6, share  # bee is 10% of the images, ~50% of the draws


def test_a_transform_that_refuses_its_random_draw_is_redrawn(tmp_path):
    """timm's posterize can ask Pillow >= 13 for 0 bits; the sample is augmented again instead."""
    root = make_images(tmp_path / "one", {"ant": 1, "bee": 1})
    calls = []

    def flaky(image):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("bits must be between or equal to 1 and 8")
        return torch.zeros(3, 8, 8, dtype=torch.uint8)

    dataset = ImageList(folders.discover(root, 0.5, 0).train, flaky, 8)
    image, _ = dataset[(0, 123)]
    assert image.shape == (3, 8, 8) and len(calls) == 2 and not dataset.failed
