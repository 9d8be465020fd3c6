"""Scoring's decode step alone (``model.decode.decode_file``: read, hash, decode, resize), images/s by thread count.

Says whether decoding or the detectors limit scoring on a host, and which thread count to use.
Each thread count runs twice, side by side: reads through ``openat2`` (one system call that refuses
a link anywhere on the path) and through the component walk from ``/`` that kernels without it get.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from common import jpeg_ids, machine, table, voc_root

from vocfleet.model import scan
from vocfleet.model.decode import decode_file
from vocfleet.model.scan import FileEntry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voc-root")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    args = ap.parse_args()
    root = voc_root(args.voc_root)
    entries = [FileEntry(str(root / "JPEGImages"), f"{i}.jpg") for i in jpeg_ids(root, args.images)]
    print(f"machine: {machine()}")
    for e in entries:  # warm the page cache: measure decoding, not the disk
        e.path.read_bytes()
    probe = scan._openat2("/", os.O_RDONLY)
    has_openat2 = probe is not None
    if probe is not None:
        os.close(probe)
    rows = []
    for n in args.threads:
        rates = {}
        for read in ("openat2", "walk") if has_openat2 else ("walk",):
            scan._openat2_works = read == "openat2"
            with ThreadPoolExecutor(n) as pool:
                t = time.perf_counter()
                list(pool.map(lambda e: decode_file(e, [args.size]), entries))
                rates[read] = len(entries) / (time.perf_counter() - t)
        ratio = f"{rates['openat2'] / rates['walk']:.2f}x" if has_openat2 else "no openat2 here"
        rows.append((n, f"{rates.get('openat2', 0):,.0f}", f"{rates['walk']:,.0f}", ratio))
    print(table(rows, ("threads", f"img/s at {args.size} px, openat2", "component walk", "openat2 / walk")))
    if has_openat2:  # the open alone, the part the two ways differ in
        scan._openat2_works = True
        costs = {}
        for read, opener in (("openat2", lambda p: scan._openat2(p, scan._FILE_FLAGS)), ("walk", scan._walk_no_links)):
            t = time.perf_counter()
            for e in entries:
                os.close(opener(str(e.path)))
            costs[read] = (time.perf_counter() - t) / len(entries) * 1e6
        ratio = costs["walk"] / costs["openat2"]
        print(f"opening one file without following links: openat2 {costs['openat2']:.1f} us, walk {costs['walk']:.1f} us ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
