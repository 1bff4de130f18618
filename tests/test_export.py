"""Compressed N:M export: layout, reference matmul, round trips, checkpoint CLI."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pgf
from pgf.analysis import export
from pgf.train.checkpointing import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kernel(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_hand_checked_layout():
  w = np.array([[1.0, -5.0], [4.0, 0.5], [-3.0, 2.0], [0.1, 6.0]], np.float32)  # (K=4, R=2)
  c = export.compress(w, 2, 4, axis=0)
  assert c.values.shape == (1, 2, 2) and c.indices.dtype == np.uint8
  np.testing.assert_array_equal(c.indices[0], [[1, 0], [2, 3]])  # ascending positions
  np.testing.assert_array_equal(c.values[0], [[4.0, -5.0], [-3.0, 6.0]])


@pytest.mark.parametrize("m,dtype", [(1, np.uint8), (4, np.uint8), (256, np.uint8),
                                     (257, np.uint16), (65536, np.uint16),
                                     (65537, np.uint32)])
def test_index_dtype_is_the_smallest_that_holds_m_minus_1(m, dtype):
  assert export.index_dtype(m) == np.dtype(dtype)


@pytest.mark.parametrize("shape,n,m,axis", [
    ((64, 24), 1, 16, 0),          # an FF kernel (in, out), default axis
    ((64, 24), 2, 4, 0),
    ((12, 32), 1, 8, 1),           # (out, in) layout: groups along axis 1
    ((4, 8, 16), 1, 4, (0, 1)),    # attention out kernel (heads, head_dim, width)
    ((16, 3, 8), 2, 8, (2, 0)),    # non-contiguous axes flattened in the given order
])
def test_reference_matmul_equals_masked_dense_matmul(shape, n, m, axis):
  w = kernel(shape)
  c = export.compress(w, n, m, axis)
  masked = np.where(np.asarray(pgf.nm_mask(w, n, m, axis)), w, 0.0)
  np.testing.assert_array_equal(export.decompress(c), masked)
  axes = (axis,) if isinstance(axis, int) else axis
  rest = [a for a in range(len(shape)) if a not in axes]
  x = kernel((5,) + tuple(shape[a] for a in axes), seed=1)
  expected = np.tensordot(x, masked, axes=(list(range(1, 1 + len(axes))), list(axes)))
  np.testing.assert_allclose(export.nm_matmul(x, c), expected, rtol=1e-5, atol=1e-5)
  flat = x.reshape(5, -1)
  np.testing.assert_allclose(export.nm_matmul(flat, c), expected, rtol=1e-5, atol=1e-5)
  assert expected.shape == (5,) + tuple(shape[a] for a in rest)


def test_matches_finalize_and_reports_bytes():
  params = {"mlp": {"fc1": {"kernel": kernel((64, 32)), "bias": np.zeros(32, np.float32)},
                    "fc2": {"kernel": kernel((32, 64), 2), "bias": np.zeros(64, np.float32)}}}
  recipe = pgf.Recipe(method="mdgf_exp", rules=((r"mlp/fc\d/kernel", "1:16"),))
  compressed = export.compress_params(params, recipe)
  finalized = pgf.finalize(params, recipe)
  for path in ("mlp/fc1/kernel", "mlp/fc2/kernel"):
    top, layer, leaf = path.split("/")
    np.testing.assert_array_equal(export.decompress(compressed[path]),
                                  finalized[top][layer][leaf])
  report = export.size_report(compressed, params)
  dense = 2 * 64 * 32 * 4
  # 1:16 keeps 1/16 of the values (4 bytes) plus one uint8 index each.
  assert report["sparsified_dense_bytes"] == dense
  assert report["sparsified_compressed_bytes"] == dense // 16 + dense // 16 // 4
  assert report["sparsified_packed_bytes"] == dense // 16 + dense // 16 // 4 // 2
  assert report["model_dense_bytes"] == dense + 96 * 4
  assert "| 1:16 | uint8 | 2 |" in export.format_report(report)


def test_npz_round_trip(tmp_path):
  params = {"attn": {"out": {"kernel": kernel((4, 8, 16))}}, "norm": {"scale": np.ones(16)}}
  recipe = pgf.Recipe(method="ste", rules=((r"attn/out/kernel", "1:8", (0, 1)),))
  compressed = export.compress_params(params, recipe)
  path = str(tmp_path / "model")  # no .npz suffix: written exactly where asked
  export.save_npz(path, compressed, params)
  loaded, dense = export.load_npz(path)
  assert set(dense) == {"norm/scale"}
  c, d = loaded["attn/out/kernel"], compressed["attn/out/kernel"]
  assert (c.n, c.m, c.axis, c.shape) == (d.n, d.m, d.axis, d.shape)
  np.testing.assert_array_equal(export.decompress(c), export.decompress(d))


def test_bad_input_is_a_value_error():
  w = kernel((8, 4))
  with pytest.raises(ValueError, match="divisible by m=16"):
    export.compress(w, 1, 16)
  with pytest.raises(ValueError, match="exactly n=1"):
    export.compress(w, 1, 4, mask=np.ones_like(w, bool))
  with pytest.raises(ValueError, match="must end in K=8"):
    export.nm_matmul(np.ones((2, 5)), export.compress(w, 1, 4))


def test_cli_exports_a_checkpoint(tmp_path):
  params = {"mlp": {"fc1": {"kernel": jnp.asarray(kernel((32, 8))), "bias": jnp.zeros(8)}}}
  recipe = pgf.Recipe(method="sr_ste", rules=((r"mlp/fc1/kernel", "1:4"),), total_steps=10)
  tx = optax.chain(pgf.gradient_flow(recipe), optax.adamw(1e-3))
  workdir = tmp_path / "run"
  checkpointer = Checkpointer(str(workdir), async_save=False)
  checkpointer.save(7, {"step": jnp.int32(7), "params": params, "opt_state": tx.init(params)})
  checkpointer.close()
  (workdir / "recipe.json").write_text(json.dumps(recipe.to_dict()))
  out = tmp_path / "export.npz"
  result = subprocess.run(
      [sys.executable, "-m", "pgf.analysis.export", f"--workdir={workdir}", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr
  assert "step 7" in result.stdout and "| 1:4 | uint8 | 1 |" in result.stdout
  compressed, dense = export.load_npz(str(out))
  np.testing.assert_array_equal(
      export.decompress(compressed["mlp/fc1/kernel"]),
      pgf.finalize(jax.tree.map(np.asarray, params), recipe)["mlp"]["fc1"]["kernel"])
  assert set(dense) == {"mlp/fc1/bias"}
  assert json.loads((tmp_path / "export.npz.json").read_text())["step"] == 7


def test_export_keeps_the_stored_masks(tmp_path):
  """A run with mask_update_every > 1 exports the masks it trained with, not those of |W|."""
  w = jnp.asarray(kernel((32, 8)))
  params = {"mlp": {"fc1": {"kernel": w}}}
  recipe = pgf.Recipe(method="ste", rules=((r"mlp/fc1/kernel", "1:4"),), total_steps=10,
                      mask_update_every=3)
  tx = pgf.optimizer(recipe, optax.sgd(0.1))
  opt_state = tx.init(params)
  # The stored mask: the smallest-magnitude entry of every group, unlike nm_mask(|W|).
  stored = ~pgf.nm_mask(w, 3, 4, 0)
  opt_state = (opt_state[0]._replace(masks={"mlp/fc1/kernel": stored}),) + opt_state[1:]
  workdir = tmp_path / "run"
  checkpointer = Checkpointer(str(workdir), async_save=False)
  checkpointer.save(9, {"step": jnp.int32(9), "params": params, "opt_state": opt_state})
  checkpointer.close()
  (workdir / "recipe.json").write_text(json.dumps(recipe.to_dict()))
  export.export_checkpoint(str(workdir), str(tmp_path / "export.npz"))
  compressed, _ = export.load_npz(str(tmp_path / "export.npz"))
  np.testing.assert_array_equal(export.decompress(compressed["mlp/fc1/kernel"]),
                                jnp.where(stored, w, 0.0))
  np.testing.assert_array_equal(
      export.decompress(compressed["mlp/fc1/kernel"]),
      pgf.finalize(params, recipe, masks=pgf.masks_from_state(opt_state))["mlp"]["fc1"]["kernel"])
