"""The LightningModule: its constructor builds exactly what trains, from the plan's sections."""

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers.norm_act import SyncBatchNormAct

from effnet.training.module import ClassifierModule
from tests.helpers import module_sections as sections


def test_module_normalises_uint8_with_the_plans_mean_and_std():
    for mean, std in (((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,) * 3, (0.5,) * 3)):
        module = ClassifierModule(**sections(mean=mean, std=std))
        images = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
        out, labels = module.on_after_batch_transfer((images, torch.tensor([0, 1])), 0)
        expected = (1.0 - mean[0]) / std[0]
        assert out.dtype == torch.float32 and torch.allclose(out[:, 0], torch.full_like(out[:, 0], expected))
        assert labels.tolist() == [0, 1]
        assert torch.allclose(module.to_uint8(out).float(), images.float())


def test_runtime_choices_are_applied_by_the_constructor():
    runtime = {"grad_checkpointing": True, "sync_batchnorm": True, "channels_last": True}
    module = ClassifierModule(**sections(runtime=runtime))
    assert module.net.backbone.grad_checkpointing
    assert any(isinstance(m, SyncBatchNormAct) for m in module.net.modules())
    assert module.net.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert module.example_input_array.shape == (1, 3, 32, 32)
    plain = ClassifierModule(**sections())
    assert not plain.net.backbone.grad_checkpointing
    assert not any(isinstance(m, SyncBatchNormAct) for m in plain.net.modules())


def test_compile_wraps_the_network_in_place_and_keeps_the_checkpoint_keys():
    compiled = ClassifierModule(**sections(runtime={"compile": True}))
    plain = ClassifierModule(**sections())
    assert compiled.net._compiled_call_impl is not None and plain.net._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict()), (
        "no _orig_mod. prefix: resume and export read it"
    )


def test_class_weights_make_a_weighted_loss_that_is_not_saved():
    module = ClassifierModule(**sections(regularisation={"class_weights": (4 / 6, 2.0)}))
    assert torch.allclose(module.train_loss.weight, torch.tensor([4 / 6, 2.0]))
    assert not any(k.startswith("train_loss") for k in module.state_dict())
    logits, target = torch.tensor([[0.0, 3.0], [2.0, 0.0]]), torch.tensor([0, 1])
    weighted = F.cross_entropy(logits, target, weight=torch.tensor([4 / 6, 2.0]), label_smoothing=0.1)
    assert module.train_loss(logits, target) == pytest.approx(weighted.item())
    assert weighted.item() != pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.1).item())


def test_ema_starts_from_the_loaded_weights_and_init_is_not_saved(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("mobilenetv3_small_100", num_classes=0)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.05)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    module = ClassifierModule(**sections(optimisation={"ema_decay": 0.9}), init=str(path))
    assert torch.equal(module.net.backbone.conv_stem.weight, source.conv_stem.weight)
    assert torch.equal(module.ema.module.backbone.conv_stem.weight, source.conv_stem.weight)
    assert "init" not in module.hparams and set(module.hparams) == {
        "network",
        "preprocessing",
        "optimisation",
        "regularisation",
        "runtime",
    }
    assert module.eval_model() is module.ema.module


def test_the_backbone_trains_at_its_share_of_the_lr_through_timms_scheduler():
    from timm.scheduler import create_scheduler_v2

    module = ClassifierModule(**sections(optimisation={"backbone_lr_scale": 0.4, "lr": 1e-3}))
    groups = module.param_groups(module.net)
    backbone = {id(p) for p in module.net.backbone.parameters()}
    for group in groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1, "a group is all backbone or all head"
        assert group.get("lr_scale", 1.0) == (0.4 if in_backbone.pop() else 1.0)
    assert sum(len(g["params"]) for g in groups) == len(list(module.net.parameters()))
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(module.net, opt="adamw", lr=1e-3, param_group_fn=module.param_groups)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=10, warmup_epochs=0)
    scheduler.step(0)
    lrs = {g.get("lr_scale", 1.0): g["lr"] for g in optimizer.param_groups}
    assert lrs[0.4] == pytest.approx(4e-4) and lrs[1.0] == pytest.approx(1e-3)
