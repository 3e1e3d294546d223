"""Class predictions for image files, from a checkpoint or an exported model.

Every model kind is wrapped as a Predictor: uint8 NCHW images in, logits out, with the class
names and preprocessing it was trained with. Evaluation, export verification, calibration and
benchmarks use the same loaders, so the numbers they report are about the file a user deploys.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from effnet import recipes
from effnet.checkpoints import read
from effnet.data.decode import load_rgb
from effnet.deploy import bundle
from effnet.deploy.paths import deployable_file, expand_inputs
from effnet.errors import UserError
from effnet.files import csv_text, write_text
from effnet.plan import usable_cores
from effnet.preprocessing import Preprocessing
from effnet.progress import track

CONFIG_FILE = "config.json"  # safetensors bundles: the network section that rebuilds it


@dataclass
class Predictor:
    """A model file behind one call: uint8 NCHW batch -> float32 logits."""

    name: str
    path: Path
    classes: list[str]
    prep: Preprocessing
    forward: Callable[[np.ndarray], np.ndarray]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.forward(images)


def torch_forward(net: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def forward(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(images)).float().numpy()

    return forward


def onnx_session(path: Path, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0 = onnxruntime's default, one per physical core
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def from_checkpoint(path: Path) -> Predictor:
    module = read.load_module(path)
    return Predictor(
        name="pytorch",
        path=path,
        classes=list(module.spec.classes),
        prep=module.preprocessing,
        forward=torch_forward(bundle.deployable(module)),
    )


def from_onnx(path: Path) -> Predictor:
    prep, classes = bundle.read_meta(path.parent)
    session = onnx_session(path)
    name = session.get_inputs()[0].name

    def forward(images: np.ndarray) -> np.ndarray:
        return session.run(None, {name: images})[0]

    kind = "onnx int8" if path.name.endswith(".int8.onnx") else "onnx fp32"
    return Predictor(name=kind, path=path, classes=classes, prep=prep, forward=forward)


def from_torchscript(path: Path) -> Predictor:
    prep, classes = bundle.read_meta(path.parent)
    net = torch.jit.load(str(path), map_location="cpu").eval()
    return Predictor(name="torchscript", path=path, classes=classes, prep=prep, forward=torch_forward(net))


def from_safetensors(path: Path) -> Predictor:
    from safetensors.torch import load_file

    from effnet.training.module import ClassifierModule

    prep, classes = bundle.read_meta(path.parent)
    args = read.sections(json.loads((path.parent / CONFIG_FILE).read_text()))
    args.pop("runtime", None)
    net = bundle.deployable(ClassifierModule(**args))
    net.load_state_dict(load_file(str(path)))
    return Predictor(name="safetensors", path=path, classes=classes, prep=prep, forward=torch_forward(net))


LOADERS: dict[str, Callable[[Path], Predictor]] = {
    ".ckpt": from_checkpoint,
    ".onnx": from_onnx,
    ".pt": from_torchscript,
    ".safetensors": from_safetensors,
}


def load_predictor(ckpt: str) -> Predictor:
    """What a user passes as ckpt=: a checkpoint, a run folder, a verified bundle or a file in one."""
    return load_file(deployable_file(ckpt))


def load_file(path: Path) -> Predictor:
    """A model file as it is, by its suffix: export.py verifies its bundle's files through this
    before the bundle is complete (load_predictor refuses a bundle without export.json)."""
    return LOADERS.get(path.suffix, from_checkpoint)(path)


class ImageFiles(Dataset):
    """Paths -> (index, uint8 CHW tensor or None, why it could not be read)."""

    def __init__(self, paths: Sequence[str | Path], prep: Preprocessing) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = prep.transform()
        self.min_decode = prep.resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, self.transform(load_rgb(self.paths[index], self.min_decode)), None
        except Exception as exc:  # a corrupt or non-image file is reported, not fatal
            return index, None, " ".join(f"{type(exc).__name__}: {exc}".split())


def _collate(items):
    good = [(i, t) for i, t, err in items if err is None]
    failed = [(i, err) for i, _, err in items if err is not None]
    images = torch.stack([t for _, t in good]).numpy() if good else None
    return [i for i, _ in good], images, failed


def batches(
    paths: Sequence[str | Path], prep: Preprocessing, batch_size: int, num_workers: int | str
) -> Iterator[tuple[list[int], np.ndarray | None, list[tuple[int, str]]]]:
    """(indices, uint8 NCHW batch, [(index, reason) unreadable]) over the paths, in order."""
    workers = recipes.loader_workers(usable_cores(), 1) if num_workers == "auto" else int(num_workers)
    workers = min(workers, max(0, len(paths) // batch_size))  # a few images: no process start-up
    return iter(
        DataLoader(
            ImageFiles(paths, prep),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_collate,
        )
    )


def infer(
    predictor: Predictor,
    paths: Sequence[str | Path],
    batch_size: int = 32,
    num_workers: int | str = 0,
    tta: bool = False,
    description: str = "predict",
) -> tuple[np.ndarray, dict[int, str]]:
    """Logits for every path (rows of NaN where unreadable) and {index: reason} for those.

    With `tta`, each image is also seen flipped left-right; the two softmaxes are averaged and
    returned as log-probabilities, so argmax, top-k and softmax keep working unchanged.
    """
    out = np.full((len(paths), len(predictor.classes)), np.nan, dtype=np.float32)
    skipped: dict[int, str] = {}
    total = -(-len(paths) // batch_size)
    for indices, images, failed in track(
        batches(paths, predictor.prep, batch_size, num_workers), total, description
    ):
        skipped.update(failed)
        if images is None:
            continue
        logits = check_finite(predictor, predictor(images))
        if tta:
            flipped = check_finite(predictor, predictor(np.ascontiguousarray(images[..., ::-1])))
            logits = np.log((softmax(logits) + softmax(flipped)) / 2)  # -inf for a class at 0 is fine
        out[indices] = logits
    return out, skipped


def check_finite(predictor: Predictor, logits: np.ndarray) -> np.ndarray:
    """The model's logits, or one line when any is nan or inf: nan probabilities would be written
    out as answers (and nan passes any `diff > atol` test)."""
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        raise UserError(
            f"{predictor.path}: the model's outputs are not finite (nan or inf) for {int(bad.sum())} of "
            f"{len(logits)} images: its weights are broken (did its run diverge?); use another checkpoint"
        )
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    probs = softmax(logits)
    order = np.argsort(-probs, axis=1, kind="stable")[:, : min(k, len(classes))]
    return [[(classes[j], float(p[j])) for j in row] for p, row in zip(probs, order, strict=True)]


def prediction_rows(
    paths: Sequence[Path], logits: np.ndarray, skipped: dict[int, str], classes, k: int
) -> list[dict]:
    ok = [i for i in range(len(paths)) if i not in skipped]
    ranked = dict(zip(ok, top_k(logits[ok], classes, k), strict=True)) if ok else {}
    return [
        {"path": str(p), "predictions": [{"label": c, "probability": pr} for c, pr in ranked.get(i, [])]}
        | ({"error": skipped[i]} if i in skipped else {})
        for i, p in enumerate(paths)
    ]


def to_csv(results: list[dict], k: int) -> str:
    header = ["path"] + [f"{what}{j}" for j in range(1, k + 1) for what in ("label", "prob")] + ["error"]
    rows = []
    for r in results:
        cells = [v for p in r["predictions"] for v in (p["label"], f"{p['probability']:.6f}")]
        cells += [""] * (2 * k - len(cells))
        rows.append(dict(zip(header, [r["path"], *cells, r.get("error", "")], strict=True)))
    return csv_text(rows, header, lineterminator="\n")


def write(results: list[dict], out: str, k: int) -> None:
    """out=-: CSV on stdout; *.json: a JSON list; anything else: CSV."""
    text = json.dumps(results, indent=1) + "\n" if out.endswith(".json") else to_csv(results, k)
    if out == "-":
        sys.stdout.write(text)
        return
    path = Path(out).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
    except OSError as exc:  # e.g. a read-only place the checks before the run could not tell
        raise UserError(f"out={out}: cannot be written ({exc.strerror})") from exc


def predict(cfg) -> dict:
    """predict.py: every readable input gets its top-k; unreadable ones are listed and skipped."""
    paths = expand_inputs(str(cfg.inputs))
    predictor = load_predictor(str(cfg.ckpt))
    logits, skipped = infer(predictor, paths, cfg.batch_size, cfg.num_workers, cfg.tta)
    results = prediction_rows(paths, logits, skipped, predictor.classes, cfg.topk)
    if len(skipped) == len(paths):  # one line: the first reason stands for all
        first = min(skipped)
        raise UserError(
            f"inputs={cfg.inputs}: none of the {len(paths)} files could be read as an image "
            f"(e.g. {paths[first]}: {skipped[first]})"
        )
    for i, reason in skipped.items():
        print(f"effnet: skipped {paths[i]}: {reason}", file=sys.stderr)
    write(results, str(cfg.out), cfg.topk)
    where = "stdout" if cfg.out == "-" else cfg.out
    print(
        f"effnet: predicted {len(paths) - len(skipped)} image(s) with {predictor.name} ({predictor.path}), "
        f"skipped {len(skipped)} -> {where}",
        file=sys.stderr,
    )
    return {"predicted": len(paths) - len(skipped), "skipped": len(skipped), "out": str(cfg.out)}
