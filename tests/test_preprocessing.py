"""Preprocessing comes from the backbone's own pretrained config; the user's values win."""

import pytest

from effnet.errors import UserError
from effnet.preprocessing import Preprocessing, pretrained_config, resolve


@pytest.mark.parametrize(
    "backbone, mean, crop_pct",
    [
        ("efficientnet_b0", (0.485, 0.456, 0.406), 0.875),
        ("tf_efficientnet_lite0", (0.5, 0.5, 0.5), 0.875),
        ("vit_base_patch16_224", (0.5, 0.5, 0.5), 0.9),
        ("resnet50", (0.485, 0.456, 0.406), 0.95),
    ],
)
def test_each_backbone_gets_its_own_statistics(backbone, mean, crop_pct):
    prep = resolve(pretrained_config(backbone), 224, {})
    assert prep.mean == pytest.approx(mean) and prep.crop_pct == crop_pct and prep.interpolation == "bicubic"


def test_user_values_win_and_one_value_means_every_channel():
    prep = resolve(pretrained_config("efficientnet_b0"), 300, {"mean": [0.5], "std": [0.25], "crop_pct": 1.0})
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.25, 0.25, 0.25)
    assert (prep.image_size, prep.resize) == (300, 300)


def test_unknown_backbone_is_one_line_with_similar_names():
    with pytest.raises(
        UserError, match="model.backbone=efficientnet_b99: not a timm model; similar names: .*efficientnet_b0"
    ):
        pretrained_config("efficientnet_b99")


def test_preprocessing_json_round_trips_and_says_the_steps():
    prep = Preprocessing(224, 0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    raw = prep.to_json()
    assert raw["resize_shorter_side"] == 256 and "centre crop 224 x 224" in raw["steps"]
    assert Preprocessing.from_dict(raw) == prep
