"""A detector as one file that plain PyTorch or ONNX Runtime can run: TorchScript or ONNX.

The file takes what scoring feeds its network, uint8 RGB pictures already resized to the
detector's size, and returns the probability that the class is present. The preprocessing it
expects, its threshold and where it came from are in its metadata (TorchScript: the extra file
``vocfleet.json``; ONNX: ``metadata_props``), so it can be used without vocfleet installed.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import ConfigError
from .augment import IMAGENET_MEAN, IMAGENET_STD, preprocess_eval
from .checkpoint import load_checkpoint
from .files import replacing
from .net import detector_model

FORMATS = ("torchscript", "onnx")
# How scoring makes the uint8 input (model/data.py: to_rgb, resize_square); a user of the file must do the same.
PREPROCESSING = (
    "Decode with Pillow (JPEG: im.draft('RGB', (2*S, 2*S)) first), apply the EXIF orientation, convert to RGB "
    "(transparent areas composited on white), then im.resize((S, S), Image.BILINEAR, reducing_gap=2.0): the whole "
    "picture squashed to S x S. Input: uint8 tensor (N, S, S, 3). The file normalises with the ImageNet mean and std itself."
)


class Probability(nn.Module):
    """uint8 (N, S, S, 3) RGB -> (N,) probability, through the same eval preprocessing as validation and scoring."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(preprocess_eval(images))[:, 0])


def export_detector(checkpoint: Path, out: Path, fmt: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write the detector in ``checkpoint`` to ``out`` as TorchScript or ONNX, with ``metadata`` plus how to feed it.

    Written to a temporary file beside ``out`` and renamed: ``out`` is the whole file or absent,
    and nothing else is left beside it.

    Returns:
        The metadata stored in the file.

    Raises:
        ConfigError: an unknown format.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: only {', '.join(FORMATS)} are supported")
    ckpt = load_checkpoint(checkpoint)
    size = int(ckpt["config"]["image_size"])
    net = Probability(detector_model(ckpt)).eval()
    meta = {
        **metadata,
        "image_size": size,
        "input": f"uint8 RGB (N, {size}, {size}, 3)",
        "output": "(N,) float: probability that the class is present; present when >= threshold",
        "preprocessing": PREPROCESSING.replace("S x S", f"{size} x {size}").replace("2*S", str(2 * size)).replace("(S, S)", f"({size}, {size})"),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with replacing(out) as tmp, torch.inference_mode(False), torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the mean, std and input layout are constants of the file
                # TorchScript is deprecated in favour of torch.export, but it is what plain torch.jit.load runs today.
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
                traced = torch.jit.trace(net, example, check_trace=False)
                torch.jit.save(traced, str(tmp), _extra_files={"vocfleet.json": json.dumps(meta)})
        else:
            try:
                _export_onnx(net, example, tmp, meta)
            finally:
                tmp.with_name(tmp.name + ".data").unlink(missing_ok=True)  # the ONNX exporter's weights file, if it wrote one
    return meta


def _export_onnx(net: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    try:
        import onnx
    except ImportError:
        raise ConfigError("--format onnx needs the onnx packages: pip install 'vocfleet[export]'") from None
    batch = torch.export.Dim("batch", min=1)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps on stdout
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["probability"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,  # one file: the weights inside it, no ".data" beside it
            verbose=False,
        )
    model = onnx.load(str(path))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(path))
