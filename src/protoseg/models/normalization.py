"""Input normalisation constants: every network and encoder owns its mean/std; ImageNet's is the default."""

from __future__ import annotations

#: Per-channel RGB mean/std of ImageNet, the statistics timm's pretrained backbones expect.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
