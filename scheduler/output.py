"""Write rows as an aligned table, CSV, JSON or JSON Lines, streamed: a row in, a line out."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from itertools import islice
from typing import Any, TextIO

FORMATS = ("table", "csv", "json", "jsonl")
TABLE_PROBE = 1000  # rows read before a table's column widths are fixed
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # escape sequences and newlines in file names
_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run a cell starting with these


def epoch_count(n: int) -> str:
    """``1 epoch``, ``5 epochs``: a class job from a start trains one."""
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def clean(text: str) -> str:
    """Text safe for a terminal: control characters (escape sequences, newlines) and undecodable bytes written as escapes."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):  # lists stay lists in JSON and CSV; a table lists them with commas
        value = ", ".join(map(str, value))
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        value = json.dumps(value, ensure_ascii=False, default=str)  # tags and lists as JSON, as --format json gives them
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value  # OWASP's advice against formula injection: shown as text
    return value


def stream(rows: Iterable[dict[str, Any]], columns: Sequence[str], fmt: str = "table", out: TextIO | None = None) -> int:
    """Write ``rows`` to ``out`` (default stdout) as they come; returns how many were written."""
    out = out or sys.stdout
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_csv_value(r.get(c)) for c in columns])
            n += 1
    elif fmt in ("json", "jsonl"):
        sep, first = ("\n", "") if fmt == "jsonl" else (",\n", "[\n")
        out.write(first)
        for r in rows:
            out.write((sep if n else "") + json.dumps({c: r.get(c) for c in columns}, default=str))
            n += 1
        out.write("\n]\n" if fmt == "json" else ("\n" if n else ""))
    else:
        rows = iter(rows)
        head = [[_cell(r.get(c)) for c in columns] for r in islice(rows, TABLE_PROBE)]
        widths = [max([len(c)] + [len(row[i]) for row in head]) for i, c in enumerate(columns)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)).rstrip() + "\n"

        out.write(line(columns))
        for cells in head:
            out.write(line(cells))
        n = len(head)
        for r in rows:  # later rows keep the widths of the first ones
            out.write(line([_cell(r.get(c)) for c in columns]))
            n += 1
    out.flush()
    return n


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str = "table") -> str:
    """:func:`stream` into a string (for short outputs), without the final newline."""
    buf = io.StringIO()
    stream(rows, columns, fmt, buf)
    return buf.getvalue().rstrip("\n")


def duration(seconds: float) -> str:
    """A rough length of time for people: '40 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def queue_line(jobs: int, seconds: float | None) -> str:
    """What is left of the training queue, for `status` and `run`."""
    if jobs == 0:
        return "queue: empty"
    left = f"about {duration(seconds)} left" if seconds is not None else "time left unknown until an epoch of that image size has finished"
    return f"queue: {jobs} job(s) to finish, {left} (from the epochs recorded so far)"
