"""Checkpoint -> a self-contained bundle: the model file, its labels and preprocessing, and a
model card holding what was measured on this machine (agreement with PyTorch, val accuracy,
size, latency).

Every exported file is loaded back through effnet.deploy.predict, the loader users run, and scored on
the run's val images: a bundle whose numbers are in its card is a bundle that was checked.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from effnet import diskspace, files
from effnet.checkpoints import find, read
from effnet.data import folders
from effnet.deploy import bundle, timm_folder
from effnet.deploy.evaluate import find_run_dir, labelled_samples, score_samples, uses_saved_split
from effnet.deploy.paths import EXPORT_FILE
from effnet.deploy.predict import CONFIG_FILE, Predictor, batches, load_file, load_predictor
from effnet.errors import UserError
from effnet.files import write_json
from effnet.preprocessing import Preprocessing
from effnet.progress import track

log = logging.getLogger("effnet")

INPUT, OUTPUT = "image", "logits"


def example_input(prep: Preprocessing, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, prep.image_size, prep.image_size), dtype=torch.uint8)


def export_onnx(net: nn.Module, prep: Preprocessing, out: Path, cfg: DictConfig, module) -> Path:
    """fp32 ONNX, dynamic batch axis, uint8 input. `exporter=dynamo` is torch's current exporter
    (torch.export + onnxscript); `exporter=torchscript` is the older tracer, about 10x faster."""
    path = out / "model.onnx"
    example = (example_input(prep),)
    if cfg.exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(
            net,
            example,
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={"images": {0: batch}},
            opset_version=cfg.opset,
            external_data=False,
            verbose=False,
        )
        program.save(str(path))
    else:
        torch.onnx.export(
            net,
            example,
            str(path),
            dynamo=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=cfg.opset or 17,
        )
    return path


def export_torchscript(net: nn.Module, prep, out: Path, cfg: DictConfig, module) -> Path:
    path = out / "model.pt"
    with torch.inference_mode():
        traced = torch.jit.trace(net, example_input(prep))
    traced.save(str(path))
    return path


def export_safetensors(net: nn.Module, prep, out: Path, cfg: DictConfig, module) -> Path:
    from safetensors.torch import save_file

    path = out / "model.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    sections = {"network": module.hparams["network"], "preprocessing": module.hparams["preprocessing"]}
    write_json(out / CONFIG_FILE, sections)
    return path


EXPORTERS: dict[str, Callable[..., Path]] = {
    "onnx": export_onnx,
    "torchscript": export_torchscript,
    "safetensors": export_safetensors,
}


class ImageCalibration:
    """Feeds quantize_static real training images, preprocessed exactly as at inference."""

    def __init__(self, paths: Sequence[str], prep: Preprocessing, batch_size: int) -> None:
        total = -(-len(paths) // batch_size)
        self._batches = track(batches(paths, prep, batch_size, num_workers=0), total, "calibrate int8")

    def get_next(self) -> dict | None:
        for _, images, _ in self._batches:
            if images is not None:
                return {INPUT: images}
        return None


def quantize_int8(fp32: Path, out: Path, calibration: Sequence[str], prep, batch_size: int) -> Path:
    """Static int8 (QDQ, per-channel weights), calibrated with MinMax on real images.
    Dynamic quantisation would only touch the final Linear of a CNN; static covers the convs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(ImageCalibration, CalibrationDataReader):
        pass

    path = out / "model.int8.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))  # shape inference + graph fusions first
        quantize_static(
            str(prepared),
            str(path),
            Reader(calibration, prep, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return path


def compare(reference: np.ndarray, other: np.ndarray) -> dict:
    """How far an exported model's logits are from PyTorch's on the same images (a nan difference
    is as far as it gets: inf)."""
    diff = np.abs(reference - other)
    return {
        "images": int(len(reference)),
        "max_abs_logit_diff": float(diff.max()) if np.isfinite(diff).all() else float("inf"),
        "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean()),
    }


def verified(agreement: dict, atol: float) -> bool:
    """An fp32 export passes: every logit within atol of PyTorch's, and the same top-1 everywhere.
    Written so that nan fails: every comparison with nan is False."""
    return agreement["max_abs_logit_diff"] <= atol and agreement["top1_agreement"] >= 1


def latency(predictor: Predictor, prep, batch_sizes: Sequence[int], repeats: int) -> dict[int, dict]:
    """Median wall time per batch after two warm-up runs; random uint8 input (cost does not
    depend on pixel values)."""
    figures = {}
    for batch in batch_sizes:
        images = example_input(prep, batch).numpy()
        for _ in range(2):
            predictor(images)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predictor(images)
            times.append(time.perf_counter() - start)
        ms = statistics.median(times) * 1000
        figures[batch] = {"ms_per_batch": round(ms, 2), "images_per_s": round(batch * 1000 / ms, 1)}
    return figures


def count_flops(net: nn.Module, prep) -> int:
    """Floating-point operations for one image (a multiply-add counts 2), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net(example_input(prep, 1))
    return int(counter.get_total_flops())


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine skews latency
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 2)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2%}"


def model_card(info: dict) -> str:
    """Markdown for people; every figure in it is also in export.json."""
    prep = info["preprocessing"]
    lines = [
        f"# {info['backbone']} classifier ({len(info['classes'])} classes)",
        "",
        f"Exported {info['exported_at']} from `{info['checkpoint']}` by `{info['command']}`.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | timm `{info['backbone']}` + dropout/linear head |",
        f"| parameters | {info['parameters']:,} |",
        f"| FLOPs per image | {info['flops'] / 1e9:.3f} G (multiply-add = 2) |",
        f"| input | `{INPUT}`: uint8 RGB, N x 3 x {prep['image_size']} x {prep['image_size']} (batch axis dynamic) |",
        f"| output | `{OUTPUT}`: float32 N x {len(info['classes'])}; softmax gives probabilities |",
        f"| classes | {', '.join(info['classes'])} (`labels.json`, in output order) |",
        "",
        "## Preprocessing (`preprocessing.json`)",
        "",
        *[f"{i}. {step}" for i, step in enumerate(prep["steps"], 1)],
        "",
        f"mean {list(prep['mean'])}, std {list(prep['std'])} (on 0-1 values) are applied inside the model.",
        "",
        "## Files",
        "",
        "| file | size |",
        "|---|---|",
        *[f"| `{name}` | {size:.2f} MB |" for name, size in info["files"].items()],
    ]
    if info.get("size_reduction"):
        lines.append(f"\nint8 is {info['size_reduction']:.1f}x smaller than fp32.")
    if "timm" in info["artefacts"]:
        lines.append(
            f"\n`{timm_folder.FOLDER}/` is the same network for plain timm, without effnet: "
            f'`timm.create_model("local-dir:{info["out"]}/{timm_folder.FOLDER}", pretrained=True)`, '
            "class names in `m.pretrained_cfg['label_names']`, preprocessing from "
            "`timm.data.resolve_data_config({}, model=m)` (it takes normalised float input, not uint8)."
        )
    lines += [
        "",
        f"## Accuracy on {info['eval_data']}",
        "",
        "| model | top-1 | macro F1 | top-1 change vs PyTorch | max abs logit diff | same top-1 as PyTorch |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in info["artefacts"].items():
        change = (
            ""
            if name == "pytorch"
            else f"{(row['top1'] - info['artefacts']['pytorch']['top1']) * 100:+.2f} pp"
        )
        diff = row.get("max_abs_logit_diff")
        lines.append(
            f"| {name} | {_pct(row['top1'])} | {_pct(row['macro_f1'])} | {change} | "
            f"{'' if diff is None else f'{diff:.2e}'} | {_pct(row.get('top1_agreement')) if diff is not None else ''} |"
        )
    if info.get("latency"):
        m = info["machine"]
        lines += [
            "",
            f"## Latency ({m['cpu']}, {m['cores']} cores, load average {m['load_average_1min']}, "
            f"torch {m['torch']} with {m['torch_threads']} threads, onnxruntime {m['onnxruntime']})",
            "",
            "| model | batch | ms / batch | images / s |",
            "|---|---|---|---|",
        ]
        for name, per_batch in info["latency"].items():
            for batch, fig in per_batch.items():
                lines.append(f"| {name} | {batch} | {fig['ms_per_batch']:.2f} | {fig['images_per_s']:.1f} |")
        lines.append(f"\nMedian of {info['bench_repeats']} runs after 2 warm-up runs, CPU only.")
    return "\n".join(lines) + "\n"


def export_images(cfg: DictConfig, ckpt: Path, classes: list[str]) -> tuple[list[str], list]:
    """Training images for calibration and labelled val images for verification and accuracy."""
    run_dir = find_run_dir(ckpt) or find.run_dir_of(ckpt)
    saved = folders.load_split(run_dir)
    own = uses_saved_split(cfg.data.root, saved)
    found = None if own else folders.discover(cfg.data.root, cfg.data.val_fraction, cfg.seed)  # once
    val, source = labelled_samples(
        cfg.data.root, "val", classes, run_dir, cfg.data.val_fraction, cfg.seed, found=found
    )
    train = [p for p, _ in (saved.train if own else found.train)]
    if cfg.val_images:
        val = val[: cfg.val_images]
    return train, (val, source)


def print_summary(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"effnet export: {info['out']}", title_justify="left")
    batch_sizes = sorted({b for per in info.get("latency", {}).values() for b in per})
    for col in ["model", "size MB", "top-1", "max |diff|", *[f"ms @ batch {b}" for b in batch_sizes]]:
        table.add_column(col)
    sizes = {"pytorch": None, **{a["kind"]: a["size_mb"] for a in info["artefacts"].values() if "kind" in a}}
    for name, row in info["artefacts"].items():
        diff = row.get("max_abs_logit_diff")
        table.add_row(
            name,
            "" if sizes.get(name) is None else f"{sizes[name]:.2f}",
            _pct(row["top1"]),
            "" if diff is None else f"{diff:.1e}",
            *[
                str(info.get("latency", {}).get(name, {}).get(b, {}).get("ms_per_batch", ""))
                for b in batch_sizes
            ],
        )
    Console().print(table)


def quiet_exporters() -> None:
    """The ONNX exporter and its optimiser log every graph pass at INFO: keep warnings only."""
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Stopped(BaseException):
    """SIGINT or SIGTERM during an export; a BaseException so that no `except Exception` on the
    way (an image loader's, a task's) mistakes it for a failure of its own."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signal = signal.Signals(signum)


@contextlib.contextmanager
def stop_signals():
    """Turn SIGINT and SIGTERM into Stopped for the duration: the default SIGTERM ends the
    process at once, with no word and its staging folder left behind."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def stop(signum, frame) -> None:
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def what_is_kept(out: Path) -> str:
    """The state of `out` after an export that did not finish: it was never touched."""
    try:
        previous = json.loads((out / "export.json").read_text()).get("exported_at")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous:
        return f"the previous bundle in {out} (exported {previous}) is kept as it was"
    if out.exists():
        return f"{out} is kept as it was"
    return f"nothing was written to {out}"


def export(cfg: DictConfig, command: str = "export.py") -> dict:
    """export.py: build the bundle in a staging folder beside `out`, load every file back, verify
    and measure it, then swap it in whole. An export that fails or is stopped (SIGINT, SIGTERM)
    leaves `out` exactly as it was: a bundle is the files that were verified together or nothing."""
    quiet_exporters()
    ckpt = read.model_checkpoint(str(cfg.ckpt))
    out = Path(cfg.out).expanduser() if cfg.out else find.run_dir_of(ckpt) / "export" / cfg.format
    made = _first_missing(out.parent)  # the folder the staging folder's creation makes, if any
    staging = None
    try:
        with stop_signals():
            module = read.load_module(ckpt)
            weights = sum(p.numel() * p.element_size() for p in module.parameters())
            try:
                staging = files.staging_folder(out)
            except OSError as exc:  # e.g. a read-only place the checks before the run could not tell
                if diskspace.no_space(exc, out) is not None:
                    raise diskspace.NoSpace("the export bundle", out, diskspace.no_space(exc, out)) from exc
                raise UserError(f"out={cfg.out or out}: cannot be written ({exc.strerror})") from exc
            copies = (1.25 if cfg.quantize == "int8" else 1) + (not timm_folder.unsupported(module.net))
            needed = int(weights * copies) + (1 << 20)  # + labels, card
            with diskspace.writing(out, "the export bundle", needed, what_is_kept(out), remove=[staging]):
                info = build(cfg, ckpt, module, out, staging, command)
                files.replace_folder(staging, out)
            staging = None
    except Stopped as stopped:
        print(
            f"effnet: export interrupted by {stopped.signal.name}; {what_is_kept(out)}; "
            "the unfinished export was discarded",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + int(stopped.signal)) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            _remove_empty(out.parent, made)  # a failed export writes nothing, <run>/export/ included
    print_summary(info)
    return info


def _first_missing(folder: Path) -> Path | None:
    """The highest of `folder` and its ancestors that does not exist yet."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing = path
    return missing


def _remove_empty(folder: Path, top: Path | None) -> None:
    """Remove `folder` and its parents up to `top` while they are empty (what a failure made)."""
    if top is None:
        return
    for path in (folder, *folder.parents):
        try:
            path.rmdir()
        except OSError:  # not empty (another export's bundle), or gone
            return
        if path == top:
            return


def build(cfg: DictConfig, ckpt: Path, module, out: Path, staging: Path, command: str) -> dict:
    """Write, load back, verify and measure the bundle in `staging`; `out` is where it will live."""
    net, prep = bundle.deployable(module), module.preprocessing
    classes = list(module.spec.classes)
    train, (val, source) = export_images(cfg, ckpt, classes)
    reference = load_predictor(str(ckpt))  # scored first: a model with nan outputs writes no bundle
    eager = score_samples(reference, val, cfg.batch_size, cfg.num_workers)

    log.info("exporting %s to %s (%s)", ckpt, out, cfg.format)
    exported = [EXPORTERS[cfg.format](net, prep, staging, cfg, module)]
    bundle.write_meta(staging, prep, classes)
    if cfg.quantize == "int8":
        calibration = train[: cfg.calibration.images]
        log.info("int8: calibrating on %d training images", len(calibration))
        exported.append(quantize_int8(exported[0], staging, calibration, prep, cfg.calibration.batch_size))
    loaders = [(path, load_file) for path in exported]
    unsupported = timm_folder.unsupported(net.net)
    if unsupported:
        log.warning("no %s/ folder for plain timm: %s", timm_folder.FOLDER, unsupported)
    else:
        folder = staging / timm_folder.FOLDER
        timm_folder.write(net.net, module.spec.backbone, prep, classes, folder)
        loaders.append((folder / timm_folder.WEIGHTS_FILE, lambda path: timm_folder.load(path.parent)))

    artefacts = {"pytorch": {"top1": eager.report["top1"], "macro_f1": eager.report["macro_f1"]}}
    predictors = {"pytorch": reference}
    for path, loader in loaders:
        predictor = loader(path)
        scored = score_samples(predictor, eager.samples, cfg.batch_size, cfg.num_workers)
        agreement = compare(eager.logits, scored.logits)
        artefacts[predictor.name] = {
            "kind": predictor.name,
            "file": path.relative_to(staging).as_posix(),
            "size_mb": _mb(path),
            "top1": scored.report["top1"],
            "macro_f1": scored.report["macro_f1"],
            **agreement,
        }
        if predictor.name != "timm":  # the same eager PyTorch network as "pytorch": no latency of its own
            predictors[predictor.name] = predictor
        if "int8" not in predictor.name and not verified(agreement, cfg.verify.atol):
            raise UserError(
                f"verification failed: {out / path.relative_to(staging)} differs from PyTorch on {agreement['images']} val images "
                f"(max abs logit diff {agreement['max_abs_logit_diff']:.2e} > verify.atol={cfg.verify.atol}, "
                f"same top-1 on {agreement['top1_agreement']:.1%}); {what_is_kept(out)}; try exporter=torchscript"
            )
    info = {
        "backbone": module.spec.backbone,
        "classes": classes,
        "checkpoint": str(ckpt),
        "command": command,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "format": cfg.format,
        "quantize": cfg.quantize,
        "exporter": cfg.exporter if cfg.format == "onnx" else None,
        "parameters": sum(p.numel() for p in net.parameters()),
        "flops": count_flops(net, prep),
        "preprocessing": prep.to_json(),
        "files": bundle_files(staging),
        "eval_data": f"{len(eager.samples)} val images from {source}",
        "artefacts": artefacts,
        "out": str(out),
        "machine": machine(),
    }
    if "onnx int8" in artefacts:
        info["size_reduction"] = artefacts["onnx fp32"]["size_mb"] / artefacts["onnx int8"]["size_mb"]
    if cfg.bench.enabled:
        info["bench_repeats"] = cfg.bench.repeats
        info["latency"] = {
            name: latency(p, prep, cfg.bench.batch_sizes, cfg.bench.repeats)
            for name, p in track(predictors.items(), len(predictors), "benchmark")
        }
    files.write_text(staging / "model_card.md", model_card(info))
    write_json(staging / EXPORT_FILE, info)  # last: a bundle holding export.json was verified whole
    info["files"] = bundle_files(staging)
    return info


def bundle_files(folder: Path) -> dict[str, float]:
    """Every file of the bundle (timm/'s too) by its path in it, with its size in MB."""
    return {p.relative_to(folder).as_posix(): _mb(p) for p in sorted(folder.rglob("*")) if p.is_file()}
