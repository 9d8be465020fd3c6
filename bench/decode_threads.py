"""Scoring's decode step alone (``model.decode.decode_file``: read, hash, decode, resize), images/s by thread count.

Says whether decoding or the detectors limit scoring on a host, and which thread count to use.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from common import jpeg_ids, machine, table, voc_root

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
    rows = []
    for n in args.threads:
        with ThreadPoolExecutor(n) as pool:
            t = time.perf_counter()
            list(pool.map(lambda e: decode_file(e, [args.size]), entries))
            rate = len(entries) / (time.perf_counter() - t)
        rows.append((n, f"{rate:,.0f}", f"{rate / float(rows[0][1].replace(',', '')) if rows else 1:.1f}x"))
    print(table(rows, ("threads", f"images/s decoded at {args.size} px", "vs first")))


if __name__ == "__main__":
    main()
