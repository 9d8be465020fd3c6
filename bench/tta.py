"""Test-time augmentation on a shared start's head: each class's detector on the fold's evaluation pictures as they are, and averaged with their mirror image.

``bench/shared_start.py --keep-starts DIR`` keeps each fold's ``start.pt`` as ``DIR/start<N>.pt``;
this script runs it once over the fold's evaluation pictures (the same image-level fold, which the
start never trained on) in two ways: the picture alone, and the mean of the logits of the picture
and its left-right mirror (twice the scoring compute), then judges every class's row of it. Prints
AP and AUC per class and the paired difference; nothing is trained.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import machine, table, voc_root

from vocfleet.model import VOC_CLASSES
from vocfleet.model.config import TrainConfig
from vocfleet.model.engine import predict_uint8, resolve_device
from vocfleet.model.metrics import average_precision, roc_auc
from vocfleet.model.net import build_model
from vocfleet.model.splits import prepare_splits


class Mirrored(torch.nn.Module):
    """A network's logits averaged over the picture and its mirror (NCHW: the last axis is the width)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(torch.flip(x, dims=[3]))) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("starts", nargs="+", help="start<N>.pt files kept by bench/shared_start.py (N: the fold)")
    ap.add_argument("--voc-root")
    ap.add_argument("--classes", default="car,dog,person,cat,bird,chair")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    root, device = voc_root(args.voc_root), resolve_device(args.device)
    print(f"machine: {machine()}")
    rows_out, diffs = [], []
    with tempfile.TemporaryDirectory(prefix="vocfleet-tta-") as work:
        for path in args.starts:
            fold = int(re.search(r"start(\d+)\.pt$", path).group(1))
            net = build_model(path, outputs=len(VOC_CLASSES), arch=args.arch).to(device)
            evals = {}
            for c in args.classes.split(","):
                cfg = TrainConfig(
                    voc_class=c, voc_root=str(root), image_size=args.size, eval_split=f"fold:{fold}/{args.folds}", fold_by="image", seed=fold, arch=args.arch
                )  # fmt: skip
                evals[c] = prepare_splits(cfg, Path(work, "cache"))[2]
            # The classes' evaluation pictures are one fold of one decoded array: the 20 outputs once for them all, each way.
            decoded = next(iter(evals.values())).decoded
            assert all(e.decoded.ids == decoded.ids for e in evals.values())
            rows = np.unique(np.concatenate([e.rows for e in evals.values()]))
            where = np.full(len(decoded.ids), -1)
            where[rows] = np.arange(len(rows))
            outputs = [predict_uint8(m, decoded.images[rows], device) for m in (net, Mirrored(net))]
            for c, evaluation in evals.items():
                got = [out[where[evaluation.rows], VOC_CLASSES.index(c)] for out in outputs]
                aps = [average_precision(p, evaluation.labels) for p in got]
                aucs = [roc_auc(p, evaluation.labels) for p in got]
                diffs.append(aps[1] - aps[0])
                rows_out.append([fold, c, f"{aps[0]:.3f} / {aucs[0]:.3f}", f"{aps[1]:.3f} / {aucs[1]:.3f}", f"{aps[1] - aps[0]:+.3f}"])
    print(table(rows_out, ("fold", "class", "as it is: AP / AUC", "with its mirror: AP / AUC", "AP change")))
    print(f"mean AP change {np.mean(diffs):+.4f} (sd {np.std(diffs, ddof=1) if len(diffs) > 1 else 0:.4f}, {sum(d > 0 for d in diffs)} of {len(diffs)} up)")


if __name__ == "__main__":
    main()
