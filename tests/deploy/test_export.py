"""export.py: the bundle round-trips through onnxruntime, int8 is smaller, the card holds the figures."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from effnet.checkpoints import read
from effnet.cli.validate import validate_command
from effnet.deploy import bundle, export, predict
from effnet.deploy.paths import EXPORT_FILE
from effnet.errors import UserError
from effnet.files import write_json
from tests.helpers import (
    FAST,
    ROOT,
    compose_cfg,
    export_info,
    make_images,
    one_error_line,
    run_script,
    source_path,
)


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
    write_json(tmp_path / EXPORT_FILE, {})  # what export.py writes last, once the bundle is verified
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
    from effnet.deploy.evaluate import evaluate as eval_run
    from tests.helpers import start_and_run as train_run

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
    export.export(
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
    from effnet.deploy.export import export as export_run
    from tests.helpers import start_and_run

    data = make_images(tmp_path / "data", {"ant": 8, "bee": 8}, size=40)
    on_cpu = [o for o in FAST if not o.startswith("trainer.accelerator")]
    summary = start_and_run(
        compose_cfg([f"data.root={data}", *on_cpu, "trainer.accelerator=gpu"]), tmp_path / "run"
    )
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


# ---------------------------------------------------------------------------------------------
# Nothing lost: a re-export that fails or is stopped leaves the previous bundle exactly as it was


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _staging_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.staging"))


def test_an_export_stopped_by_sigterm_keeps_the_previous_bundle_as_it_was(trained_run, onnx_bundle, tmp_path):
    """A real SIGTERM once the new model file exists (the moment that used to leave model.onnx
    without export.json, or an empty folder): the old bundle is untouched, the staging folder gone."""
    out = tmp_path / "onnx"
    shutil.copytree(onnx_bundle, out)
    before = _snapshot(out)
    args = [f"ckpt={trained_run}", f"out={out}", "quantize=int8", "exporter=torchscript", "num_workers=0"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "export.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": source_path()},
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".onnx.staging-*/model.onnx")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    exported_at = export_info(onnx_bundle)["exported_at"]
    assert err.strip().splitlines()[-1] == (
        f"effnet: export interrupted by SIGTERM; the previous bundle in {out} (exported {exported_at}) "
        "is kept as it was; the unfinished export was discarded"
    )
    assert "Traceback" not in err
    assert _snapshot(out) == before and _staging_left(out) == []


def test_a_failed_export_keeps_the_previous_bundle_and_a_good_one_replaces_it_whole(
    trained_run, onnx_bundle, tmp_path
):
    out = tmp_path / "onnx"
    shutil.copytree(onnx_bundle, out)
    before = _snapshot(out)
    base = [
        f"ckpt={trained_run}",
        f"out={out}",
        "exporter=torchscript",
        "bench.enabled=false",
        "num_workers=0",
    ]
    with pytest.raises(
        UserError, match=rf"verification failed: .* the previous bundle in {out} .* is kept as it was"
    ):
        export.export(compose_cfg([*base, "verify.atol=1e-30"], config_name="export"))
    assert _snapshot(out) == before and _staging_left(out) == []

    export.export(compose_cfg([*base, "format=safetensors"], config_name="export"))
    names = {p.name for p in out.iterdir()}  # rewritten whole: no stale ONNX files beside the new model
    assert "model.safetensors" in names and not names & {"model.onnx", "model.int8.onnx"}
    assert export_info(out)["format"] == "safetensors" and export_info(out)["out"] == str(out)
    assert predict.load_predictor(str(out)).name == "safetensors" and _staging_left(out) == []


def test_a_bundle_without_export_json_is_refused_in_one_line(onnx_bundle, inbox_images, tmp_path):
    """What an export cut short by earlier versions left: model files never verified."""
    partial = tmp_path / "onnx"
    shutil.copytree(onnx_bundle, partial)
    (partial / EXPORT_FILE).unlink()
    for ckpt in (partial, partial / "model.onnx"):
        with pytest.raises(
            UserError, match=rf"ckpt={ckpt}: unfinished export bundle \({partial} has no export.json"
        ):
            predict.load_predictor(str(ckpt))
    for script, extra in (("predict.py", [f"inputs={inbox_images}"]), ("eval.py", [])):
        result = run_script(script, [f"ckpt={partial}", *extra], tmp_path)
        assert result.returncode == 2
        assert one_error_line(result).startswith(f"ckpt={partial}: unfinished export bundle")


@pytest.fixture
def inbox_images(tmp_path: Path) -> Path:
    return make_images(tmp_path / "inbox", {"a": 2})


def test_replace_folder_swaps_whole_folders(tmp_path, monkeypatch):
    from effnet import files

    target = tmp_path / "bundle"
    for one_step in (True, False):  # renameat2's exchange, and the two renames where it is missing
        if not one_step:
            monkeypatch.setattr(files, "_exchange", lambda a, b: False)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        (target / "old.onnx").write_text("old")
        new = files.staging_folder(target)
        (new / "new.onnx").write_text("new")
        files.replace_folder(new, target)
        assert [p.name for p in target.iterdir()] == ["new.onnx"] and _staging_left(target) == []
    stale = tmp_path / ".bundle.staging-999999999"  # a pid that cannot be alive: a killed export's
    stale.mkdir()
    assert files.staging_folder(target).name == f".bundle.staging-{os.getpid()}" and not stale.exists()


def test_an_export_that_does_not_fit_keeps_the_previous_bundle(trained_run, onnx_bundle, small_disk):
    """A real full disk under the staging folder: one line, the old bundle as it was, no staging left."""
    from effnet.diskspace import NoSpace

    size = sum(p.stat().st_size for p in onnx_bundle.rglob("*") if p.is_file())
    disk = small_disk(size + 2 * (1 << 20))  # the bundle, and not another model beside it
    out = disk / "onnx"
    shutil.copytree(onnx_bundle, out)
    before = _snapshot(out)
    cfg = [
        f"ckpt={trained_run}",
        f"out={out}",
        "exporter=torchscript",
        "bench.enabled=false",
        "num_workers=0",
    ]
    with pytest.raises(NoSpace) as raised:
        export.export(compose_cfg(cfg, config_name="export"))
    assert str(raised.value).startswith(
        f"could not write the export bundle {out}: no space left on device ({disk} has "
    )
    exported_at = export_info(onnx_bundle)["exported_at"]
    assert re.search(
        rf"free, it needs ~\d+\.\d MB\); the previous bundle in {out} \(exported {exported_at}\) is kept as it was$",
        str(raised.value),
    ), str(raised.value)
    assert _snapshot(out) == before and _staging_left(out) == []
