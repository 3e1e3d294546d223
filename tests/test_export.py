"""export.py: the bundle round-trips through onnxruntime, int8 is smaller, the card holds the figures."""

import json

import numpy as np
import pytest
import torch

from effnet import checkpoint, export, predict
from effnet.commands import validate_command
from effnet.errors import UserError
from tests.trained import compose, export_info, onnx_bundle, trained_run  # noqa: F401  (session fixtures)


def test_onnx_bundle_is_verified_against_pytorch(onnx_bundle):  # noqa: F811
    names = {p.name for p in onnx_bundle.iterdir()}
    assert names >= {
        "model.onnx",
        "model.int8.onnx",
        "labels.json",
        "preprocessing.json",
        "model_card.md",
        "export.json",
    }
    info = export_info(onnx_bundle)
    fp32 = info["artefacts"]["onnx fp32"]
    assert fp32["images"] == 12 and fp32["max_abs_logit_diff"] <= 1e-4 and fp32["top1_agreement"] == 1.0
    assert fp32["top1"] == info["artefacts"]["pytorch"]["top1"]
    assert json.loads((onnx_bundle / "labels.json").read_text()) == ["ant", "bee", "wasp"]
    assert info["parameters"] > 0 and info["flops"] > 0


def test_onnx_takes_uint8_with_a_dynamic_batch(onnx_bundle):  # noqa: F811
    session = predict.onnx_session(onnx_bundle / "model.onnx")
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [3, 32, 32] and not isinstance(inp.shape[0], int)
    for batch in (1, 5):
        images = np.random.default_rng(batch).integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)
        assert session.run(None, {inp.name: images})[0].shape == (batch, 3)


def test_int8_is_smaller_and_its_accuracy_change_is_reported(onnx_bundle):  # noqa: F811
    info = export_info(onnx_bundle)
    fp32, int8 = info["artefacts"]["onnx fp32"], info["artefacts"]["onnx int8"]
    assert int8["size_mb"] < fp32["size_mb"] / 2
    assert info["size_reduction"] == pytest.approx(fp32["size_mb"] / int8["size_mb"])
    assert 0 <= int8["top1"] <= 1 and 0 <= int8["top1_agreement"] <= 1
    assert set(info["latency"]) == {"pytorch", "onnx fp32", "onnx int8"}
    assert all(set(per) == {"1", "4"} for per in info["latency"].values())


def test_model_card_holds_the_measured_numbers(onnx_bundle):  # noqa: F811
    card = (onnx_bundle / "model_card.md").read_text()
    info = export_info(onnx_bundle)
    int8, pytorch = info["artefacts"]["onnx int8"], info["artefacts"]["pytorch"]
    assert f"| `model.int8.onnx` | {int8['size_mb']:.2f} MB |" in card
    assert (
        f"| onnx int8 | {int8['top1']:.2%} | {int8['macro_f1']:.2%} | {(int8['top1'] - pytorch['top1']) * 100:+.2f} pp |"
        in card
    )
    for name, per_batch in info["latency"].items():
        for batch, fig in per_batch.items():
            assert f"| {name} | {batch} | {fig['ms_per_batch']:.2f} | {fig['images_per_s']:.1f} |" in card
    assert f"{info['parameters']:,}" in card and "mobilenetv3_small_100" in card
    assert "resize the shorter side to 36 px (bicubic)" in card  # floor(32 / 0.875)


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
def test_other_formats_load_back_identically(trained_run, tmp_path, fmt):  # noqa: F811
    module = checkpoint.load_module(checkpoint.resolve(str(trained_run)))
    net, prep = checkpoint.deployable(module), checkpoint.preprocessing(module)
    cfg = compose("export", [f"ckpt={trained_run}", f"format={fmt}"])
    path = export.EXPORTERS[fmt](net, prep, tmp_path, cfg, module)
    checkpoint.write_bundle_meta(tmp_path, prep, module.hparams.classes)
    loaded = predict.load_predictor(str(tmp_path))  # the bundle folder, as a user passes it
    assert loaded.path == path and loaded.name == fmt and loaded.classes == ["ant", "bee", "wasp"]
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert np.allclose(loaded(images.numpy()), net(images).numpy(), atol=1e-5)


def test_export_rejects_bad_options(trained_run):  # noqa: F811
    with pytest.raises(UserError, match="format=tflite: must be one of: onnx, torchscript, safetensors"):
        validate_command("export", compose("export", [f"ckpt={trained_run}", "format=tflite"]))
    with pytest.raises(UserError, match="quantize=int4: must be int8 or null"):
        validate_command("export", compose("export", [f"ckpt={trained_run}", "quantize=int4"]))
    with pytest.raises(UserError, match="quantize=int8 needs format=onnx"):
        validate_command(
            "export", compose("export", [f"ckpt={trained_run}", "quantize=int8", "format=safetensors"])
        )
    with pytest.raises(UserError, match=r"bench.batch_sizes=\[0\]: must be a list of integers >= 1"):
        validate_command("export", compose("export", [f"ckpt={trained_run}", "bench.batch_sizes=[0]"]))
