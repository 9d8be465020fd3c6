"""One ResNet-50 detector's forward pass, images/s, in the ways scoring could run it (GPU diagnosis).

Variants: the training model in eval mode under bf16 autocast (what validation runs), the scoring
model (batch norms folded, bf16 weights), and that model under torch.compile; at a few batch sizes.
Timed with CUDA events after warm-up, median of the repeats.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import machine, table

from vocfleet.model.net import build_model, inference_model


def rate(fn, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
    return x.shape[0] / sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"machine: {machine()}")
    model = build_model("scratch").to(device).eval()
    fast = inference_model(model, device)
    compiled = torch.compile(fast, dynamic=False)

    def autocast_eval(x):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x)

    rows = []
    for b in args.batches:
        x32 = torch.randn(b, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
        x16 = x32.to(torch.bfloat16)
        got = {"eval model, bf16 autocast": rate(autocast_eval, x32, args.repeats), "folded, bf16 weights": rate(fast, x16, args.repeats)}
        if b == 256:
            t = time.perf_counter()
            got["folded, bf16 weights, torch.compile"] = rate(compiled, x16, args.repeats)
            print(f"compile + timing: {time.perf_counter() - t:.0f} s")
        rows += [(name, b, f"{r:,.0f}", f"{r / 20:,.0f}") for name, r in got.items()]
    print(table(rows, ("variant", "batch", "forward images/s", "= images/s through 20 detectors")))


if __name__ == "__main__":
    main()
