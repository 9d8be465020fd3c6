"""Build the ResNet-50 binary detector (single logit) with the chosen initialisation (or its tiny stand-in for tests)."""

from __future__ import annotations

import copy
import logging
import os
import socket
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops import stochastic_depth

from . import ConfigError
from .config import check_init

log = logging.getLogger(__name__)
IMAGENET_WEIGHTS = ResNet50_Weights.IMAGENET1K_V2
# Files a host without internet may hold instead (torchvision's names): the V2 weights first, else V1.
IMAGENET_FILES = (IMAGENET_WEIGHTS, ResNet50_Weights.IMAGENET1K_V1)


def imagenet_weights_path() -> Path:
    """Where this machine holds the ImageNet ResNet-50 weights: torchvision's cache, ``$TORCH_HOME/hub/checkpoints``
    (``~/.cache/torch/hub/checkpoints`` by default), under torchvision's file name for the V2 weights or, failing
    that, the V1 weights; the V2 path when neither is there (where a download goes)."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = [folder / os.path.basename(w.url) for w in IMAGENET_FILES if (folder / os.path.basename(w.url)).is_file()]
    return found[0] if found else folder / os.path.basename(IMAGENET_WEIGHTS.url)


def ensure_imagenet_weights(timeout: float = 15.0) -> Path:
    """Return the cached ImageNet weights, downloading them once if needed.

    Raises:
        ConfigError: not cached and the download failed (offline): fails in seconds, never hangs.
    """
    path = imagenet_weights_path()
    if path.is_file():
        return path
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        torch.hub.load_state_dict_from_url(IMAGENET_WEIGHTS.url, progress=True, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - any network failure means the same thing to the user
        raise ConfigError(
            f"--init imagenet: weights not cached at {path} and download failed ({exc.__class__.__name__}); "
            f"fetch {IMAGENET_WEIGHTS.url} into that path, or use --init scratch or --init PATH"
        ) from None
    finally:
        socket.setdefaulttimeout(old)
    return path


class TinyResNet(ResNet):
    """torchvision's ResNet at 1/8 width with one basic block per stage (~0.1 M parameters).

    The same class, forward, layer names and one-logit ``fc`` head as ResNet-50, so every path
    (training, checkpoints, batch-norm folding, scoring, export) runs unchanged on a network that
    trains in milliseconds per batch and saves in kilobytes: ``--arch tiny``, for tests and smoke runs.
    """

    def __init__(self, num_classes: int = 1, zero_init_residual: bool = False):
        super().__init__(BasicBlock, [1, 1, 1, 1], num_classes=num_classes, zero_init_residual=zero_init_residual)
        self.fc = nn.Linear(self.inplanes, num_classes)  # ResNet sizes its head for full width

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):  # torchvision's signature
        return super()._make_layer(block, planes // 8, blocks, stride, dilate)


def build_model(init: str = "scratch", outputs: int = 1, zero_init_residual: bool = False, arch: str = "resnet50", head: int | None = None) -> nn.Module:
    """Build torchvision's ResNet-50 with a single-logit head (or ``outputs`` logits while training).

    Args:
        init: ``scratch`` (random, as the origin), ``imagenet`` (torchvision weights; backbone only),
            or a path to a state dict (a torchvision ResNet-50 or a vocfleet checkpoint).
        outputs: logits of the head; detectors are saved with one.
        zero_init_residual: start each residual branch's last batch norm at zero, so every block
            begins as the identity (torchvision's option; markedly better for short training from
            scratch). Irrelevant when weights are loaded.
        arch: ``resnet50``; ``resnet50-lowres`` (the same weights, no max pool after the stem: for small
            pictures); or ``tiny`` (:class:`TinyResNet`).
        head: with a state dict of a many-logit network (a shared start's ``start.pt``), the row of
            its head that becomes this network's one logit (its class's); None: a fresh head.
    Returns:
        The model, on the CPU, in channels_last layout.
    """
    if arch == "tiny":
        model = TinyResNet(num_classes=outputs, zero_init_residual=zero_init_residual)
    else:
        model = resnet50(weights=None, num_classes=outputs, zero_init_residual=zero_init_residual)
        if arch == "resnet50-lowres":
            model.maxpool = nn.Identity()  # no weights: state dicts, ImageNet init and export are ResNet-50's
    if init == "imagenet":
        path = ensure_imagenet_weights()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a file put there by hand may be anything
            raise ConfigError(f"--init imagenet: {path} is not a PyTorch state dict ({exc.__class__.__name__}); replace it with torchvision's file") from None
        _load_backbone(model, state, arch)
    elif init != "scratch":
        path = check_init(init)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - not a torch file, a pickle with code, truncated: all the same to the user
            raise ConfigError(f"--init {init!r}: not a PyTorch state dict ({exc.__class__.__name__}); pass a ResNet-50 .pt/.pth file") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise ConfigError(f"--init {init!r}: holds a {type(state).__name__}, not a state dict; pass a ResNet-50 .pt/.pth file")
        if head is not None and outputs == 1 and getattr(state.get("fc.weight"), "ndim", 0) == 2 and len(state["fc.weight"]) > head:
            state = single_logit_state(state, head)
        _load_backbone(model, state, arch)
    return model.to(memory_format=torch.channels_last)


def add_stochastic_depth(model: ResNet, last: float) -> None:
    """Stochastic depth in training: each sample skips each residual branch with a probability rising
    linearly from ``last / blocks`` at the first block to ``last`` at the last (Huang et al. 2016).

    A forward hook on the branch's last batch norm drops it (and scales what survives, so evaluation
    needs nothing); the weights and their names are untouched, so a detector trained this way is
    saved, loaded and scored like any other.
    """
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    for i, block in enumerate(blocks, 1):
        branch_end = block.bn3 if isinstance(block, Bottleneck) else block.bn2
        p = last * i / len(blocks)
        branch_end.register_forward_hook(lambda m, _, out, p=p: stochastic_depth(out, p, "row", m.training))


def detector_model(ckpt: dict) -> nn.Module:
    """The network of a saved detector (``detector.pt``'s contents), its weights loaded."""
    model = build_model("scratch", arch=ckpt.get("config", {}).get("arch", "resnet50"))
    model.load_state_dict(ckpt["model"])
    return model


def _load_backbone(model: nn.Module, state: dict, arch: str) -> None:
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.startswith("fc.")]
    if missing:
        raise ConfigError(f"--init state dict does not fit --arch {arch}: {len(missing)} tensors missing or of another shape (e.g. {missing[0]})")
    model.load_state_dict(usable, strict=False)
    log.info("initialised %d tensors from the given weights (head %s)", len(usable), "kept" if "fc.weight" in usable else "fresh")


def inference_model(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of a trained ResNet-50 made for scoring: batch norms folded into their convolutions.

    Folding leaves the function unchanged up to float rounding. Eagerly each folded bias is still a
    pass of its own, so it pays under ``torch.compile``, which fuses bias, residual add and ReLU
    (1.8x on an H200; bench/RESULTS.md). On a GPU the weights become bfloat16 in channels_last, so
    no autocast casts are paid on every call; inputs must then be bfloat16 too (see
    :func:`inference_dtype`).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    pairs = [(model, "conv1", "bn1")]
    for block in model.modules():
        if isinstance(block, Bottleneck | BasicBlock):
            pairs += [(block, f"conv{i}", f"bn{i}") for i in ((1, 2, 3) if isinstance(block, Bottleneck) else (1, 2))]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
    for parent, conv, bn in pairs:
        setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn)))
        setattr(parent, bn, nn.Identity())
    return model.to(device, dtype=inference_dtype(device), memory_format=torch.channels_last)


def inference_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU; float32 on a CPU (few CPUs run bfloat16 convolutions faster)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def bf16_training(device: torch.device) -> bool:
    """Whether training steps on ``device`` run in bfloat16 autocast.

    On a GPU, always; on a CPU only where its instructions do bfloat16 natively (AVX512-BF16 or
    AMX): 1.55x per step on a 2-core AMD EPYC (bench/train_efficiency.py); elsewhere oneDNN emulates
    it, slower than float32. Validation and scoring stay float32 on a CPU (:func:`inference_dtype`).
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    native = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check is not None and check() for check in native)


def training_autocast(device: torch.device, bf16: bool | None = None) -> torch.autocast:
    """The autocast context of one training step: bfloat16 if ``bf16``, or where :func:`bf16_training` says when None."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_training(device) if bf16 is None else bf16)


# Auxiliary supervision (--aux-classes): one logit per VOC class while training, one kept.


class AuxLoss(nn.Module):
    """BCE on the detector's own class (with ``pos_weight``) plus the mean BCE of the other classes.

    The other 19 VOC labels of the same training images are extra supervision for the shared
    features; the detector that is kept has only its own class's logit.
    """

    def __init__(self, index: int, pos_weight: torch.Tensor | None, aux_weight: float = 1.0):
        super().__init__()
        self.index, self.pos_weight, self.aux_weight = index, pos_weight, aux_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        k = self.index
        main = nn.functional.binary_cross_entropy_with_logits(logits[:, k], targets[:, k], pos_weight=self.pos_weight)
        mask = targets >= 0
        mask[:, k] = False
        aux = nn.functional.binary_cross_entropy_with_logits(logits, targets.clamp(min=0), reduction="none")
        return main + self.aux_weight * (aux * mask).sum() / mask.sum().clamp(min=1)


class MaskedBCE(nn.Module):
    """A shared start's loss: BCE over every class of every picture, except labels marked unknown (-1: difficult only)."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mask = targets >= 0
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets.clamp(min=0), reduction="none")
        return (loss * mask).sum() / mask.sum().clamp(min=1)


class SelectLogit(nn.Module):
    """View of a multi-output network as the single-logit detector of one class."""

    def __init__(self, model: nn.Module, index: int):
        super().__init__()
        self.model, self.index = model, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.index : self.index + 1]


def single_logit_state(state: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """State dict of the single-logit ResNet-50 for one output of a multi-output one."""
    out = dict(state)
    out["fc.weight"] = state["fc.weight"][index : index + 1].clone()
    out["fc.bias"] = state["fc.bias"][index : index + 1].clone()
    return out
