"""eval.py on a tiny trained run: its numbers against a manual pass over the same images."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from effnet.cli.validate import validate_command
from effnet.data.decode import load_rgb
from effnet.data.transforms import eval_transform
from effnet.deploy import evaluate
from effnet.errors import UserError
from effnet.training.module import ClassifierModule
from tests.helpers import compose_cfg, make_images, run_script


def read_csv(path, reader=csv.DictReader) -> list:
    with open(path, newline="") as f:
        return list(reader(f))


def manual_predictions(run_dir, samples):
    """The checkpoint's own module, timm's eval transform and the module's normalisation."""
    raw = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
    module = ClassifierModule(**raw["hyper_parameters"])
    module.load_state_dict(raw["state_dict"])
    module.eval()
    cfg = module.net.backbone.pretrained_cfg  # timm's own values, not effnet's plan
    tf = eval_transform(
        raw["hyper_parameters"]["network"]["image_size"], cfg["crop_pct"], cfg["interpolation"]
    )
    images = torch.stack([tf(load_rgb(p, 64)) for p, _ in samples])
    with torch.no_grad():
        return module(module.normalize(images)).argmax(1).numpy()


def test_eval_matches_a_manual_computation_on_the_saved_split(trained_run, tmp_path):
    out = tmp_path / "eval"
    result = run_script("eval.py", [f"ckpt={trained_run}", f"hydra.run.dir={out}", "num_workers=0"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "eval.json").read_text())

    split = json.loads((trained_run / "split.json").read_text())
    true = np.array([y for _, y in split["val"]])
    pred = manual_predictions(trained_run, split["val"])
    confmat = np.zeros((3, 3), dtype=int)
    np.add.at(confmat, (true, pred), 1)
    assert report["images"] == len(true) == 12
    assert report["confusion_matrix"] == confmat.tolist()
    assert report["top1"] == pytest.approx((true == pred).mean())
    recall = [confmat[i, i] / confmat[i].sum() for i in range(3)]
    assert [r["recall"] for r in report["per_class"]] == pytest.approx(recall)
    assert report["top5"] is None  # 3 classes: top-5 means nothing
    assert report["model"].endswith("best.ckpt") and report["split"] == "val"

    rows = read_csv(out / "confusion_matrix.csv", csv.reader)
    assert (
        rows[0][1:] == ["ant", "bee", "wasp"]
        and [list(map(int, r[1:])) for r in rows[1:]] == confmat.tolist()
    )
    assert Image.open(out / "confusion_matrix.png").size[0] > 100
    predictions = read_csv(out / "predictions.csv")
    assert sum(int(r["correct"]) for r in predictions) == (true == pred).sum()
    assert (out / "misclassified.png").is_file() == bool((true != pred).any())
    assert "top-1" in result.stdout and "wasp" in result.stdout


def test_eval_on_another_folder_maps_classes_by_name(trained_run, tmp_path):
    other = make_images(tmp_path / "other", {"wasp": 3, "bee": 2}, size=40, seed=5)
    out = tmp_path / "eval"
    cfg = compose_cfg(
        config_name="eval", overrides=[f"ckpt={trained_run}", f"data.root={other}", "num_workers=0"]
    )
    report = evaluate.evaluate(cfg, out)
    assert report["images"] == 5 and "every image" in report["data"]
    predictions = read_csv(out / "predictions.csv")
    truth = {r["path"].split("/")[-2]: r["true"] for r in predictions}
    assert truth == {"wasp": "wasp", "bee": "bee"}  # folder names, not folder order
    assert {r["class"]: r["support"] for r in report["per_class"]} == {"ant": 0, "bee": 2, "wasp": 3}

    make_images(other, {"hornet": 1}, size=40)
    with pytest.raises(UserError, match="class\\(es\\) hornet are not known to the model"):
        evaluate.evaluate(cfg, out)


def test_eval_tta_scores_every_image(trained_run, tmp_path):
    from effnet.data.folders import load_split
    from effnet.deploy.predict import load_predictor, softmax

    predictor = load_predictor(str(trained_run))
    samples = load_split(trained_run).val
    plain = evaluate.score_samples(predictor, samples, 8, 0)
    flipped = evaluate.score_samples(predictor, samples, 8, 0, tta=True)
    assert flipped.report["images"] == plain.report["images"] == len(samples)
    probs = np.exp(flipped.logits)  # TTA returns log of the averaged probabilities
    assert probs.sum(1) == pytest.approx(np.ones(len(samples)), abs=1e-5)
    # the flipped view changed the answer: not just the unflipped probabilities in log space
    assert not np.allclose(flipped.logits, np.log(softmax(plain.logits)), atol=1e-6)


def test_eval_errors(trained_run, tmp_path):
    with pytest.raises(UserError, match="ckpt=/nope: not found; pass a .ckpt file, a training run folder"):
        validate_command("eval", compose_cfg(config_name="eval", overrides=["ckpt=/nope"]))
    with pytest.raises(UserError, match="split=test: the run's split has no test images"):
        evaluate.evaluate(
            compose_cfg(config_name="eval", overrides=[f"ckpt={trained_run}", "split=test", "num_workers=0"]),
            tmp_path,
        )
    with pytest.raises(UserError, match="split=holdout: must be one of: val, test, train"):
        validate_command(
            "eval", compose_cfg(config_name="eval", overrides=[f"ckpt={trained_run}", "split=holdout"])
        )
