"""How a report writes a number, an interval or a name: the cells every section's markdown and
terminal forms share, and the JSON conversion of its tables."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.stats.inference import as_float

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#!|~])")


def md_escape(text) -> str:
    """Escape markdown metacharacters (|, *, _, [, ...) so names render literally in tables."""
    s = str(text).replace("\r", " ").replace("\n", " ")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return s.replace("&", "&amp;")


def code_span(text) -> str:
    """An inline code span (outside tables): shown verbatim, backticks neutralised."""
    return "`" + str(text).replace("`", "'").replace("\n", " ") + "`"


def num(x, digits: int = 6, sign: bool = False) -> str:
    x = as_float(x)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def p_value(x) -> str:
    x = as_float(x)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.1e}" if x < 1e-4 else f"{x:.4f}"


def interval(lo, hi) -> str:
    """A difference's interval, signed: [-0.012345, +0.001234]."""
    if not (math.isfinite(as_float(lo)) and math.isfinite(as_float(hi))):
        return "n/a"
    return f"[{num(lo, sign=True)}, {num(hi, sign=True)}]"


def sd_interval(low, high) -> str:
    """A standard deviation's interval, unsigned."""
    if not (math.isfinite(as_float(low)) and math.isfinite(as_float(high))):
        return "n/a"
    return f"[{num(low)}, {num(high)}]"


def seed_count(x) -> str:
    x = as_float(x)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "never (diff is 0)" if x > 0 else "n/a"
    return f"{int(x):,}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def labelled(label: str, texts: Sequence[str]) -> list[str]:
    """Terminal lines of one section, each under its label and escaped for rich: "  worth: ..."."""
    from rich.markup import escape

    return [f"  {label}: {escape(text)}" for text in texts if text]


def jsonable(x):
    """Tables and numbers as JSON holds them: non-finite floats become null."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    return x
