"""Whole models: compress a params tree with its recipe, size reports, export a training run."""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np

from pgf.analysis import export
from pgf.deploy.format import NMKernel, from_compressed, index_bits, save
from pgf.masks import normalize_axes
from pgf.recipes import Recipe
from pgf.sparsify import check_params, leaf_path, rule_axis

__all__ = ["compress_params", "kernel_bytes", "size_report", "format_report",
           "export_checkpoint"]


def _cast(leaf, dtype):
  leaf = np.asarray(leaf)
  return leaf.astype(dtype) if dtype is not None and np.issubdtype(leaf.dtype, np.floating) \
      else leaf


def compress_params(params, recipe: Recipe, opt_state=None, dtype=None, *, masks=None):
  """params with every leaf a rule matches replaced by its `NMKernel` at the rule's target N:M.

  The kept positions are those `pgf.finalize(params, recipe, opt_state)` keeps: pass the
  optimizer state of the run (checked as in `pgf.sparsify`), or its stored masks dict (as the
  third argument, or `masks=`); one of them is required with `mask_update_every > 1`. `dtype`
  (e.g. "bfloat16") casts the kept values and every other floating-point leaf; None keeps the
  params' dtypes.
  """
  dtype = None if dtype is None else jax.numpy.dtype(dtype)  # knows "bfloat16"
  compressed = export.compress_params(params, recipe, opt_state, masks=masks,
                                      fn="deploy.compress_params")

  def convert(key_path, leaf):
    path = leaf_path(key_path)
    if path in compressed:
      return from_compressed(compressed[path], dtype)
    return _cast(leaf, dtype)

  return jax.tree_util.tree_map_with_path(convert, params)


def kernel_bytes(shape, n: int, m: int, axis, itemsize: int) -> tuple[int, int, int]:
  """(dense, kept values, packed indices) bytes of an N:M kernel of `shape` (no arrays needed)."""
  axes = normalize_axes(shape, axis)
  k = math.prod(shape[a] for a in axes)
  r = math.prod(shape) // k
  kept = k // m * n
  return math.prod(shape) * itemsize, kept * r * itemsize, kept * index_bits(m) * -(-r // 8)


def size_report(params, recipe: Recipe, dtype="bfloat16") -> dict[str, Any]:
  """Bytes dense vs compressed per kernel a rule matches, and for the whole model, with every
  floating leaf stored in `dtype`. `params` may be abstract (`jax.eval_shape`)."""
  itemsize = np.dtype(jax.numpy.dtype(dtype)).itemsize
  matched = check_params(params, recipe)
  kernels, other = [], 0
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    path, shape = leaf_path(key_path), tuple(leaf.shape)
    size = itemsize if np.issubdtype(leaf.dtype, np.floating) else np.dtype(leaf.dtype).itemsize
    if path not in matched:
      other += math.prod(shape) * size
      continue
    rule = recipe.rules[matched[path][0]]
    dense, values, indices = kernel_bytes(shape, rule.n, rule.m, rule_axis(rule, shape), size)
    kernels.append({"path": path, "shape": list(shape), "pattern": f"{rule.n}:{rule.m}",
                    "index_bits": index_bits(rule.m), "dense_bytes": dense,
                    "values_bytes": values, "index_bytes": indices,
                    "compressed_bytes": values + indices})
  dense = sum(k["dense_bytes"] for k in kernels)
  stored = sum(k["compressed_bytes"] for k in kernels)
  return {"dtype": jax.numpy.dtype(dtype).name, "kernels": kernels,
          "sparsified_dense_bytes": dense, "sparsified_compressed_bytes": stored,
          "sparsified_ratio": stored / dense if dense else float("nan"),
          "other_bytes": other, "model_dense_bytes": dense + other,
          "model_compressed_bytes": stored + other,
          "model_ratio": (stored + other) / (dense + other) if dense + other else float("nan")}


def _mb(b: int) -> str:
  return f"{b / 2**20:,.2f} MiB"


def format_report(report: dict[str, Any], per_kernel: bool = True) -> str:
  """Markdown: one row per compressed kernel (if `per_kernel`), then the totals."""
  lines = []
  if per_kernel:
    lines += ["| kernel | shape | N:M | index bits | dense | compressed | ratio |",
              "|---|---|---|---|---|---|---|"]
    for k in report["kernels"]:
      lines.append(f"| {k['path']} | {tuple(k['shape'])} | {k['pattern']} | {k['index_bits']} | "
                   f"{k['dense_bytes']:,} | {k['compressed_bytes']:,} | "
                   f"{k['compressed_bytes'] / k['dense_bytes']:.4f} |")
    lines.append("")
  lines += [f"| {report['dtype']} | dense | compressed | ratio |", "|---|---|---|---|",
            f"| {len(report['kernels'])} N:M kernels | {_mb(report['sparsified_dense_bytes'])} | "
            f"{_mb(report['sparsified_compressed_bytes'])} | {report['sparsified_ratio']:.4f} |",
            f"| whole model | {_mb(report['model_dense_bytes'])} | "
            f"{_mb(report['model_compressed_bytes'])} | {report['model_ratio']:.4f} |"]
  return "\n".join(lines)


def export_checkpoint(workdir: str, out: str, step: int | None = None,
                      dtype=None) -> dict[str, Any]:
  """Writes a run's checkpoint (default: newest) as a deployable .safetensors file.

  The masks are the trained ones (`pgf.target_masks` with the checkpoint's stored masks, as
  `pgf.finalize` and the run's "deployed" evaluation use). `dtype` as in `compress_params`.
  Returns a summary of what was written (the file itself is self-describing).
  """
  from pgf.analysis import runs  # pylint: disable=g-import-not-at-top
  recipe = runs.load_recipe(workdir)
  if not recipe.rules:
    raise ValueError(f"workdir={workdir!r}: its recipe has no rules, nothing to compress")
  state, step = runs.restore_checkpoint(workdir, step)
  params = jax.tree.map(np.asarray, state["params"])
  tree = compress_params(params, recipe, runs.stored_masks(state, recipe), dtype)
  save(out, tree)
  leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, NMKernel))
  kernels = [k for k in leaves if isinstance(k, NMKernel)]
  dense = sum(k.dense_bytes for k in kernels)
  stored = sum(k.nbytes for k in kernels)
  rest = sum(np.asarray(x).nbytes for x in leaves if not isinstance(x, NMKernel))
  return {"workdir": os.path.abspath(workdir), "step": step, "out": os.path.abspath(out),
          "kernels": len(kernels), "sparsified_dense_bytes": dense,
          "sparsified_compressed_bytes": stored, "model_dense_bytes": dense + rest,
          "model_compressed_bytes": stored + rest, "file_bytes": os.path.getsize(out)}


def abstract_model(config):
  """(model, abstract params, example inputs) of a config's model, without reading any data (a
  ResNet's BatchNorm statistics are not params and are left out): its family's
  `abstract_model` (pgf/families/)."""
  from pgf import families  # pylint: disable=g-import-not-at-top
  return families.of_config(config).abstract_model(config)


def config_recipe(config) -> Recipe:
  """The recipe a config trains with (its rules are all a size report needs)."""
  from pgf import train  # pylint: disable=g-import-not-at-top
  from pgf.analysis import runs  # pylint: disable=g-import-not-at-top
  try:
    steps = runs.total_steps_from_config(config)
  except ValueError:
    steps = 1000  # the rules, not the schedule, decide the sizes
  return train.build_recipe(config, steps)
