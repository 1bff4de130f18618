"""Compressed N:M export: per sparsified kernel, the kept values and their in-group indices.

    python -m pgf.analysis.export --workdir=/tmp/vit_demo --out=/tmp/vit_demo_1of16.npz

A kernel whose contracting axis K is grouped by M (the rule's `axis`, flattened in order, as in
`pgf.nm_mask`) with N kept per group is stored as two arrays of shape (K // M, N, R), where R is
the product of the remaining (output) dimensions:

    values[g, j, r]   the j-th kept weight of group g in output column r (ascending position)
    indices[g, j, r]  its position inside the group, 0 .. M - 1, in the smallest unsigned
                      integer type that holds M - 1 (uint8 up to M = 256)

so the weight sits at contracting index g·M + indices[g, j, r]. `nm_matmul` multiplies by this
form directly (only kept weights are touched); `decompress` restores W ⊙ Φ.

The .npz holds "<path>/values" and "<path>/indices" for each sparsified kernel, every other
parameter under its own path (so the file is the whole deployable model), and "__meta__", a JSON
string with each kernel's n, m, axis, shape and dtype. NumPy reads it with allow_pickle=False.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np

from pgf.masks import normalize_axes, nm_mask
from pgf.recipes import Recipe
from pgf.sparsify import check_params, leaf_path, rule_axis, target_masks

__all__ = ["CompressedNM", "index_dtype", "compress", "decompress", "nm_matmul",
           "compress_params", "save_npz", "load_npz", "size_report", "format_report",
           "export_checkpoint"]

META_KEY = "__meta__"


def index_dtype(m: int) -> np.dtype:
  """The smallest unsigned integer type that holds m - 1."""
  for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
    if m - 1 <= np.iinfo(dtype).max:
      return np.dtype(dtype)
  raise ValueError(f"m={m} is too large for any integer index type")


@dataclasses.dataclass(frozen=True)
class CompressedNM:
  """One N:M kernel in compressed form (see the module docstring for the layout)."""
  values: np.ndarray
  indices: np.ndarray
  n: int
  m: int
  axis: tuple[int, ...]
  shape: tuple[int, ...]

  @property
  def contracting(self) -> int:
    return math.prod(self.shape[a] for a in self.axis)

  @property
  def dense_bytes(self) -> int:
    return math.prod(self.shape) * self.values.dtype.itemsize

  @property
  def compressed_bytes(self) -> int:
    return self.values.nbytes + self.indices.nbytes

  @property
  def packed_bytes(self) -> int:
    """Bytes if each index took only ceil(log2 M) bits (what a kernel format would pack)."""
    bits = max(math.ceil(math.log2(self.m)), 1) if self.m > 1 else 0
    return self.values.nbytes + math.ceil(self.indices.size * bits / 8)


def _grouped_view(shape, axis) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
  """(axes, permutation putting them first, K, R) for a kernel of `shape`."""
  axes = normalize_axes(shape, axis)
  rest = tuple(a for a in range(len(shape)) if a not in axes)
  k = math.prod(shape[a] for a in axes)
  return axes, axes + rest, k, math.prod(shape[a] for a in rest)


def compress(w, n: int, m: int, axis=0, mask=None) -> CompressedNM:
  """Compresses `w` to N:M along `axis`.

  Args:
    w: the kernel (dense weights; only the kept positions are stored).
    n, m: keep n of every m along the grouped axis.
    axis: int or tuple of axes flattened in order (as in `pgf.nm_mask`).
    mask: the boolean mask to keep (default: `pgf.nm_mask(w, n, m, axis)`, the same mask
      `pgf.finalize` applies). It must have exactly n True per group.
  """
  w = np.asarray(w)
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not (
      isinstance(m, (int, np.integer)) and 1 <= n <= m):
    raise ValueError(f"compress: need ints 1 <= n <= m, got n={n!r}, m={m!r}")
  axes, perm, k, r = _grouped_view(w.shape, axis)
  if k % m:
    raise ValueError(f"compress: the grouped length {k} (shape {w.shape}, axis {axis!r}) is not "
                     f"divisible by m={m}")
  mask = np.asarray(nm_mask(w, n, m, axis) if mask is None else mask, bool)
  if mask.shape != w.shape:
    raise ValueError(f"compress: mask shape {mask.shape} differs from the kernel's {w.shape}")
  grouped_w = np.transpose(w, perm).reshape(k // m, m, r)
  grouped_mask = np.transpose(mask, perm).reshape(k // m, m, r)
  counts = grouped_mask.sum(axis=1)
  if np.any(counts != n):
    raise ValueError(f"compress: mask must keep exactly n={n} of every m={m} along axis "
                     f"{axis!r}; found groups with {sorted(set(counts.ravel().tolist()))}")
  # A stable argsort of "not kept" lists the kept positions first, in ascending order.
  order = np.argsort(~grouped_mask, axis=1, kind="stable")[:, :n, :]
  return CompressedNM(values=np.take_along_axis(grouped_w, order, axis=1),
                      indices=order.astype(index_dtype(m)), n=int(n), m=int(m), axis=axes,
                      shape=tuple(w.shape))


def decompress(c: CompressedNM) -> np.ndarray:
  """The dense kernel W ⊙ Φ (zeros at pruned positions)."""
  _, perm, k, r = _grouped_view(c.shape, c.axis)
  grouped = np.zeros((k // c.m, c.m, r), c.values.dtype)
  np.put_along_axis(grouped, c.indices.astype(np.intp), c.values, axis=1)
  permuted_shape = tuple(c.shape[a] for a in perm)
  return np.transpose(grouped.reshape(permuted_shape), np.argsort(perm))


def nm_matmul(x, c: CompressedNM) -> np.ndarray:
  """x contracted with the kernel over its grouped axes, reading only the kept weights.

  Args:
    x: activations whose trailing dimension is the flattened contracting length K, or whose
      trailing dimensions are the grouped axes' sizes (e.g. (..., heads, head_dim)).
    c: the compressed kernel.

  Returns:
    (..., *remaining kernel dims): equal to contracting x with `decompress(c)`.
  """
  x = np.asarray(x)
  axes, perm, k, r = _grouped_view(c.shape, c.axis)
  grouped_dims = tuple(c.shape[a] for a in axes)
  if x.shape[-len(grouped_dims):] == grouped_dims:
    batch = x.shape[:-len(grouped_dims)]
  elif x.shape and x.shape[-1] == k:
    batch = x.shape[:-1]
  else:
    raise ValueError(f"nm_matmul: x shape {x.shape} must end in K={k} or in {grouped_dims} "
                     f"(kernel shape {c.shape}, axis {c.axis})")
  groups = x.reshape(-1, k // c.m, c.m)
  group_ids = np.arange(k // c.m)[:, None, None]
  picked = groups[:, group_ids, c.indices.astype(np.intp)]  # (B, K // M, N, R)
  out = np.einsum("bgjr,gjr->br", picked, c.values)
  return out.reshape(batch + tuple(c.shape[a] for a in perm[len(axes):]))


# ----------------------------------------------------------------------------- whole models
def compress_params(params, recipe: Recipe, opt_state=None, *, masks=None,
                    fn: str = "analysis.export.compress_params") -> dict[str, CompressedNM]:
  """{path: CompressedNM} for every leaf a rule matches, at the rule's target N:M.

  The kept positions are those `pgf.finalize(params, recipe, opt_state)` keeps: pass the
  optimizer state (or its stored masks dict) of a run; required with `mask_update_every > 1`.
  """
  source = masks if opt_state is None else opt_state
  if source is None and recipe.mask_update_every > 1:
    raise ValueError(
        f"pgf.{fn}: recipe.mask_update_every={recipe.mask_update_every} trains with masks kept "
        "in the optimizer state; masks recomputed from |W| would deploy a model that was never "
        f"trained: pass it, pgf.{fn}(params, recipe, opt_state), or the stored masks "
        "(masks=pgf.masks_from_state(opt_state), or pgf.analysis.runs.stored_masks(state, "
        "recipe) of a restored run)")
  matched = check_params(params, recipe)
  phis = target_masks(params, recipe, source)
  out = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = leaf_path(key_path)
    if path in matched:
      rule = recipe.rules[matched[path][0]]
      out[path] = compress(np.asarray(leaf), rule.n, rule.m, rule_axis(rule, leaf.shape),
                           mask=np.asarray(phis[path]))
  return out


def _dense_leaves(params, skip) -> dict[str, np.ndarray]:
  return {leaf_path(kp): np.asarray(leaf)
          for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
          if leaf_path(kp) not in skip}


def save_npz(path: str, compressed: Mapping[str, CompressedNM], params=None) -> None:
  """Writes the compressed kernels (and, if `params` is given, every other leaf) to `path`."""
  arrays: dict[str, np.ndarray] = {}
  meta = {}
  for name, c in compressed.items():
    arrays[f"{name}/values"] = c.values
    arrays[f"{name}/indices"] = c.indices
    meta[name] = {"n": c.n, "m": c.m, "axis": list(c.axis), "shape": list(c.shape),
                  "dtype": c.values.dtype.name}
  if params is not None:
    for name, leaf in _dense_leaves(params, compressed).items():
      if name in arrays or name == META_KEY:
        raise ValueError(f"parameter path {name!r} collides with an export entry")
      arrays[name] = leaf
  arrays[META_KEY] = np.asarray(json.dumps({"format": "pgf-nm-v1", "kernels": meta}))
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with open(path, "wb") as f:  # a file object keeps NumPy from appending ".npz"
    np.savez(f, **arrays)


def load_npz(path: str) -> tuple[dict[str, CompressedNM], dict[str, np.ndarray]]:
  """(compressed kernels, other parameters by path) from a file written by `save_npz`."""
  with np.load(path, allow_pickle=False) as data:
    if META_KEY not in data.files:
      raise ValueError(f"{path!r} has no {META_KEY!r} entry: not written by pgf export")
    meta = json.loads(str(data[META_KEY]))["kernels"]
    compressed = {
        name: CompressedNM(values=data[f"{name}/values"], indices=data[f"{name}/indices"],
                           n=info["n"], m=info["m"], axis=tuple(info["axis"]),
                           shape=tuple(info["shape"]))
        for name, info in meta.items()}
    kernel_entries = {f"{name}/{part}" for name in meta for part in ("values", "indices")}
    dense = {name: data[name] for name in data.files
             if name != META_KEY and name not in kernel_entries}
  return compressed, dense


# ----------------------------------------------------------------------------- report
def size_report(compressed: Mapping[str, CompressedNM], params=None) -> dict[str, Any]:
  """Bytes dense vs compressed, per kernel and in total (and for the whole model if `params`)."""
  kernels = []
  for name, c in compressed.items():
    kernels.append({"path": name, "pattern": f"{c.n}:{c.m}", "shape": list(c.shape),
                    "dense_bytes": c.dense_bytes, "values_bytes": c.values.nbytes,
                    "index_bytes": c.indices.nbytes, "index_dtype": c.indices.dtype.name,
                    "compressed_bytes": c.compressed_bytes, "packed_bytes": c.packed_bytes})
  dense = sum(k["dense_bytes"] for k in kernels)
  stored = sum(k["compressed_bytes"] for k in kernels)
  report = {"kernels": kernels, "sparsified_dense_bytes": dense,
            "sparsified_compressed_bytes": stored,
            "sparsified_packed_bytes": sum(k["packed_bytes"] for k in kernels),
            "sparsified_ratio": stored / dense if dense else float("nan")}
  if params is not None:
    rest = sum(leaf.nbytes for leaf in _dense_leaves(params, compressed).values())
    report.update(model_dense_bytes=rest + dense, model_compressed_bytes=rest + stored,
                  model_ratio=(rest + stored) / (rest + dense))
  return report


def format_report(report: Mapping[str, Any]) -> str:
  """Markdown: one row per pattern (kernels aggregated), then totals."""
  by_pattern: dict[tuple, list] = {}
  for k in report["kernels"]:
    by_pattern.setdefault((k["pattern"], k["index_dtype"]), []).append(k)
  lines = ["| pattern | index type | kernels | dense bytes | compressed bytes | ratio | "
           "packed-index bytes |", "|---|---|---|---|---|---|---|"]
  for (pattern, dtype), rows in by_pattern.items():
    dense = sum(r["dense_bytes"] for r in rows)
    stored = sum(r["compressed_bytes"] for r in rows)
    lines.append(f"| {pattern} | {dtype} | {len(rows)} | {dense:,} | {stored:,} | "
                 f"{stored / dense:.3f} | {sum(r['packed_bytes'] for r in rows):,} |")
  lines.append(f"\nSparsified kernels: {report['sparsified_dense_bytes']:,} B dense -> "
               f"{report['sparsified_compressed_bytes']:,} B compressed "
               f"({report['sparsified_ratio']:.3f}x).")
  if "model_dense_bytes" in report:
    lines.append(f"Whole model: {report['model_dense_bytes']:,} B dense -> "
                 f"{report['model_compressed_bytes']:,} B ({report['model_ratio']:.3f}x).")
  return "\n".join(lines)


def export_checkpoint(workdir: str, out: str, step: int | None = None) -> dict[str, Any]:
  """Compresses the params of a run's checkpoint (default: newest) with its recipe's targets.

  Writes `out` (.npz) and `out` + ".json" (the size report); returns the report.
  """
  from pgf.analysis import runs  # pylint: disable=g-import-not-at-top
  recipe = runs.load_recipe(workdir)
  if not recipe.rules:
    raise ValueError(f"workdir={workdir!r}: its recipe has no rules, nothing to compress")
  state, step = runs.restore_checkpoint(workdir, step)
  params = jax.tree.map(np.asarray, state["params"])
  compressed = compress_params(params, recipe, runs.stored_masks(state, recipe))
  save_npz(out, compressed, params)
  report = dict(size_report(compressed, params), workdir=os.path.abspath(workdir), step=step,
                out=os.path.abspath(out))
  with open(out + ".json", "w") as f:
    json.dump(report, f, indent=2)
  return report


def main(argv):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # orbax / XLA chatter would bury the output
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  report = export_checkpoint(f.workdir, f.out, f.step if f.step >= 0 else None)
  print(f"{report['workdir']} step {report['step']} -> {report['out']}")
  print(format_report(report))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "Training workdir (with recipe.json and checkpoints/).")
  flags.DEFINE_string("out", None, "Output .npz file (the report goes to OUT.json).")
  flags.DEFINE_integer("step", -1, "Checkpoint step (default: the newest).")
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
