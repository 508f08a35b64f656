"""The backbone names the station knows, without importing torch (the CLI's argument parser needs them)."""
from __future__ import annotations

DEFAULT_BACKBONE = "efficientnet_lite0"
LITE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BACKBONES = (*LITE_BACKBONES, "wide_resnet50_2")
