"""The train and eval transforms: uint8 tensors at the image size, and the eval transform is the
one a Preprocessing hands out (what eval, predict and export use)."""

import torch
from PIL import Image

from effnet.data.transforms import eval_transform, train_transform
from effnet.preprocessing import Preprocessing
from tests.helpers import compose_cfg


def test_train_and_eval_transforms_give_uint8_at_the_image_size():
    image = Image.new("RGB", (90, 60), "green")
    prep = Preprocessing(48, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
    train = train_transform(48, compose_cfg([]).augment.heavy, "bicubic")
    for transform in (train, eval_transform(48, 0.875, "bicubic"), prep.transform()):
        out = transform(image)
        assert out.dtype == torch.uint8 and out.shape == (3, 48, 48)
    assert torch.equal(prep.transform()(image), eval_transform(48, 0.875, "bicubic")(image))
