"""export.py: the bundle round-trips through onnxruntime, int8 is smaller, the card holds the figures."""

import json

import numpy as np
import pytest
import torch

from effnet.checkpoints import read
from effnet.cli.validate import validate_command
from effnet.deploy import bundle, export, predict
from effnet.errors import UserError
from tests.helpers import FAST, compose_cfg, export_info, make_images


def test_onnx_bundle_is_verified_against_pytorch(onnx_bundle):
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


def test_onnx_takes_uint8_with_a_dynamic_batch(onnx_bundle):
    session = predict.onnx_session(onnx_bundle / "model.onnx")
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [3, 32, 32] and not isinstance(inp.shape[0], int)
    for batch in (1, 5):
        images = np.random.default_rng(batch).integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)
        assert session.run(None, {inp.name: images})[0].shape == (batch, 3)


def test_int8_is_smaller_and_its_accuracy_change_is_reported(onnx_bundle):
    info = export_info(onnx_bundle)
    fp32, int8 = info["artefacts"]["onnx fp32"], info["artefacts"]["onnx int8"]
    assert int8["size_mb"] < fp32["size_mb"] / 2
    assert info["size_reduction"] == pytest.approx(fp32["size_mb"] / int8["size_mb"])
    assert 0 <= int8["top1"] <= 1 and 0 <= int8["top1_agreement"] <= 1
    assert set(info["latency"]) == {"pytorch", "onnx fp32", "onnx int8"}
    assert all(set(per) == {"1", "4"} for per in info["latency"].values())


def test_model_card_holds_the_measured_numbers(onnx_bundle):
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
def test_other_formats_load_back_identically(trained_run, tmp_path, fmt):
    module = read.load_module(read.model_checkpoint(str(trained_run)))
    net, prep = bundle.deployable(module), module.preprocessing
    cfg = compose_cfg(config_name="export", overrides=[f"ckpt={trained_run}", f"format={fmt}"])
    path = export.EXPORTERS[fmt](net, prep, tmp_path, cfg, module)
    bundle.write_meta(tmp_path, prep, module.spec.classes)
    loaded = predict.load_predictor(str(tmp_path))  # the bundle folder, as a user passes it
    assert loaded.path == path and loaded.name == fmt and loaded.classes == ["ant", "bee", "wasp"]
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert np.allclose(loaded(images.numpy()), net(images).numpy(), atol=1e-5)


def test_export_rejects_bad_options(trained_run):
    with pytest.raises(UserError, match="format=tflite: must be one of: onnx, torchscript, safetensors"):
        validate_command(
            "export", compose_cfg(config_name="export", overrides=[f"ckpt={trained_run}", "format=tflite"])
        )
    with pytest.raises(UserError, match="quantize=int4: must be int8 or null"):
        validate_command(
            "export", compose_cfg(config_name="export", overrides=[f"ckpt={trained_run}", "quantize=int4"])
        )
    with pytest.raises(UserError, match="quantize=int8 needs format=onnx"):
        validate_command(
            "export",
            compose_cfg(
                config_name="export", overrides=[f"ckpt={trained_run}", "quantize=int8", "format=safetensors"]
            ),
        )
    with pytest.raises(UserError, match=r"bench.batch_sizes=\[0\]: must be a list of integers >= 1"):
        validate_command(
            "export",
            compose_cfg(config_name="export", overrides=[f"ckpt={trained_run}", "bench.batch_sizes=[0]"]),
        )


def test_a_lite0_run_trains_evaluates_and_exports_with_its_own_mean_and_std(tmp_path):
    """tf_efficientnet_lite0 was pretrained with mean = std = 0.5: the whole path must use them."""
    from effnet.deploy.evaluate import run as eval_run
    from effnet.training.run import run as train_run

    data = make_images(tmp_path / "data", {"ant": 6, "bee": 6})
    summary = train_run(
        compose_cfg([f"data.root={data}", *FAST, "model.backbone=tf_efficientnet_lite0"]), tmp_path / "run"
    )
    assert (
        summary["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and summary["preprocessing"]["std"] == [0.5] * 3
    )
    result = eval_run(compose_cfg([f"ckpt={tmp_path / 'run'}", "num_workers=0"], "eval"), tmp_path / "eval")
    assert result["images"] == summary["num_val_images"]
    out = tmp_path / "bundle"
    export.run(
        compose_cfg(
            [
                f"ckpt={tmp_path / 'run'}",
                f"out={out}",
                "exporter=torchscript",
                "bench.enabled=false",
                "num_workers=0",
            ],
            "export",
        )
    )
    prep = json.loads((out / bundle.PREPROCESSING_FILE).read_text())
    assert (prep["mean"], prep["std"]) == ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    # the graph normalises with them: 255 in every pixel is (1 - 0.5) / 0.5 = 1.0 at the network's input
    deployed = predict.load_predictor(str(out / "model.onnx"))
    module = read.load_module(read.model_checkpoint(str(tmp_path / "run")))
    images = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    with torch.no_grad():
        expected = module.eval_model()(torch.ones(1, 3, 32, 32)).numpy()
    assert np.allclose(deployed(images.numpy()), expected, atol=1e-4)


@pytest.mark.gpu
def test_a_run_trained_on_the_gpu_exports_and_verifies(tmp_path):
    from effnet.deploy.export import run as export_run
    from effnet.training.run import run

    data = make_images(tmp_path / "data", {"ant": 8, "bee": 8}, size=40)
    on_cpu = [o for o in FAST if not o.startswith("trainer.accelerator")]
    summary = run(compose_cfg([f"data.root={data}", *on_cpu, "trainer.accelerator=gpu"]), tmp_path / "run")
    assert summary["precision"] == "bf16-mixed" and summary["channels_last"], "trained as a GPU run trains"
    out = tmp_path / "bundle"
    overrides = [f"ckpt={tmp_path / 'run'}", f"out={out}", "exporter=torchscript", "bench.repeats=2"]
    export_run(compose_cfg([*overrides, "bench.batch_sizes=[1]", "num_workers=0"], config_name="export"))
    fp32 = export_info(out)["artefacts"]["onnx fp32"]
    assert fp32["max_abs_logit_diff"] <= 1e-4 and fp32["top1_agreement"] == 1.0


def test_a_nan_difference_fails_verification():
    """nan > atol is False: an exported file giving nan must still fail, not pass as 'within atol'."""
    reference = np.array([[1.0, 2.0], [3.0, 0.0]], dtype=np.float32)
    assert export.verified(export.compare(reference, reference + 1e-6), atol=1e-4)
    broken = reference.copy()
    broken[1, 0] = np.nan  # argmax still agrees: nan sorts first
    agreement = export.compare(reference, broken)
    assert agreement["top1_agreement"] == 1.0
    assert agreement["max_abs_logit_diff"] == float("inf")
    assert not export.verified(agreement, atol=1e-4)
