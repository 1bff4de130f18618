"""Collectives in compiled HLO text: which ops, how many, how many bytes each moves."""

from __future__ import annotations

import collections
import math
import re

__all__ = ["collectives", "summarize", "DTYPE_BYTES"]

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s4": 0.5, "u4": 0.5, "s16": 2, "u16": 2, "f16": 2,
               "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
               "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
OPS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
       "ragged-all-to-all", "collective-broadcast")
_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+ = (.+?) (" + "|".join(OPS) + r")(-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\dm\d(?:fn)?)?)\[([\d,]*)\]")


def _arrays(shape_text: str):
  out = []
  for dtype, dims in _ARRAY.findall(shape_text):
    if dtype not in DTYPE_BYTES:
      continue
    n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    out.append((dtype, dims, n * DTYPE_BYTES[dtype]))
  return out


def collectives(hlo_text: str) -> list[dict]:
  """One entry per collective op (synchronous, or the -start of an async pair): its op name,
  the largest array it produces ("shape", per device) and that array's bytes."""
  found = []
  for line in hlo_text.splitlines():
    m = _LINE.match(line)
    if not m:
      continue
    arrays = _arrays(m.group(1))
    if not arrays:
      continue
    op, is_start = m.group(2), bool(m.group(3))
    if is_start and op == "collective-permute" and len(arrays) > 1:
      arrays = arrays[1:2]                       # (input, output, contexts...): the output
    elif is_start and op in ("all-gather", "reduce-scatter") and len(arrays) > 1:
      half = len(arrays) // 2                    # ((inputs...), (outputs...))
      arrays = arrays[half:] if op == "all-gather" else arrays[half:]
    # A combined collective (tuple result) moves all of its arrays.
    nbytes = sum(a[2] for a in arrays)
    dtype, dims, _ = max(arrays, key=lambda a: a[2])
    found.append({"op": op, "shape": f"{dtype}[{dims}]" + (f" +{len(arrays) - 1}"
                                                           if len(arrays) > 1 else ""),
                  "bytes": int(nbytes)})
  return found


def summarize(found: list[dict]) -> dict[str, dict]:
  """{op: {"count", "bytes", "largest"}} over `collectives(...)`."""
  out = collections.OrderedDict()
  for c in found:
    entry = out.setdefault(c["op"], {"count": 0, "bytes": 0, "largest": ("", 0)})
    entry["count"] += 1
    entry["bytes"] += c["bytes"]
    if c["bytes"] > entry["largest"][1]:
      entry["largest"] = (c["shape"], c["bytes"])
  return dict(out)
