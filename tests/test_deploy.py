"""pgf.deploy: packed format round trips, verify, nm_dot (jnp and Pallas interpret), the Flax
interceptor on ViT and T5, the memory report, and a trained demo exported and reloaded."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pgf
from pgf import deploy
from pgf.analysis import export
from pgf.models import t5 as t5_lib
from pgf.models import vit as vit_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def kernel(shape, seed=0, dtype=np.float32):
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def masked(w, n, m, axis):
  return np.where(np.asarray(pgf.nm_mask(w, n, m, axis)), w, 0.0)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 6, 8, 16, 32, 64, 128, 256])
def test_indices_pack_to_ceil_log2_m_bits_and_back(m):
  idx = np.random.default_rng(m).integers(0, m, (3, 2, 21))  # R = 21: a padded last chunk
  packed = deploy.pack_indices(idx, m)
  bits = deploy.index_bits(m)
  assert bits == max(1, int(np.ceil(np.log2(m))))
  assert packed.dtype == np.uint8 and packed.shape == (3, 2, bits, 3)  # 8 indices -> bits bytes
  np.testing.assert_array_equal(deploy.unpack_indices(jnp.asarray(packed), m, 21), idx)


def test_hand_checked_packing():
  # 4-bit indices of columns 0..15 (R8 = 2): chunk c holds columns c, 2 + c, ..., 14 + c.
  idx = np.arange(16) % 16
  packed = deploy.pack_indices(idx[None], 16)[0]  # (4 planes, 2 chunks)
  word0 = sum(int(idx[2 * t]) << (4 * t) for t in range(8))
  assert [int(b) for b in packed[:, 0]] == [(word0 >> (8 * k)) & 255 for k in range(4)]
  with pytest.raises(ValueError, match=r"\[0, 16\)"):
    deploy.pack_indices(np.array([16]), 16)
  with pytest.raises(ValueError, match="m=512"):
    deploy.pack_indices(np.array([1]), 512)


LAYOUTS = [
    ("ff (in, out), axis 0", (64, 24), 1, 16, 0),
    ("(out, in), axis 1", (12, 32), 2, 8, 1),
    ("ViT attn QKV (in, heads, head_dim), axis 0", (32, 2, 8), 1, 4, 0),
    ("ViT attn out (heads, head_dim, out), axis (0, 1)", (2, 16, 24), 1, 8, (0, 1)),
    ("stacked (L, in, out), axis 1", (3, 32, 16), 1, 32, 1),
    ("conv HWIO, axis (0, 1, 2)", (3, 3, 16, 8), 1, 16, (0, 1, 2)),
    ("conv HWIO, axis 2", (2, 2, 16, 8), 2, 4, 2),
]


@pytest.mark.parametrize("name,shape,n,m,axis", LAYOUTS, ids=[l[0] for l in LAYOUTS])
def test_round_trip_every_axis_layout(tmp_path, name, shape, n, m, axis):
  w = kernel(shape)
  k = deploy.from_dense(w, n, m, axis)
  deploy.verify(k, n, m, axis)
  deploy.verify(masked(w, n, m, axis), n, m, axis)  # the dense form passes too
  path = str(tmp_path / "k.safetensors")
  deploy.save(path, {"layer": {"kernel": k, "bias": np.ones(3, np.float32)}})
  loaded = deploy.load(path)["layer"]
  got = loaded["kernel"]
  assert (got.n, got.m, got.axis, got.shape) == (n, m, k.axis, shape)
  np.testing.assert_array_equal(got.dense(), masked(w, n, m, axis))
  np.testing.assert_array_equal(export.decompress(deploy.to_compressed(got)), masked(w, n, m, axis))
  np.testing.assert_array_equal(loaded["bias"], np.ones(3))
  axes = k.axis
  x = kernel((5,) + tuple(shape[a] for a in axes), seed=1)
  expected = np.tensordot(x, masked(w, n, m, axis), axes=(list(range(1, 1 + len(axes))), list(axes)))
  for impl in ("gather", "expand"):
    np.testing.assert_allclose(deploy.nm_dot(x, got, impl=impl), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(deploy.nm_dot(x.reshape(5, -1), got), expected, rtol=1e-5, atol=1e-5)


def test_file_layout_and_bf16_values(tmp_path):
  w = kernel((64, 16))
  k = deploy.from_dense(w, 1, 16, 0, dtype=jnp.bfloat16)
  path = str(tmp_path / "m.safetensors")
  header = deploy.save(path, {"fc": {"kernel": k}})
  assert header == deploy.read_header(path)
  assert header["kernels"]["fc/kernel"] == {"n": 1, "m": 16, "axis": [0], "shape": [64, 16],
                                            "bits": 4}
  from safetensors import safe_open
  with safe_open(path, framework="numpy") as f:
    assert sorted(f.keys()) == ["fc/kernel/indices", "fc/kernel/values"]
    assert f.get_tensor("fc/kernel/values").shape == (4, 1, 16)
    assert str(f.get_tensor("fc/kernel/values").dtype) == "bfloat16"
    assert f.get_tensor("fc/kernel/indices").shape == (4, 1, 4, 2)  # 4 bits x 16 columns
  got = deploy.load(path)["fc"]["kernel"]
  assert got.values.dtype == jnp.bfloat16
  # 1:16 in bf16 with 4-bit indices: (2 + 0.5) / 32 of the dense bytes.
  assert got.nbytes / got.dense_bytes == pytest.approx(2.5 / 32)


def test_verify_rejects_what_is_not_exactly_nm():
  w = masked(kernel((16, 4)), 1, 4, 0)
  with pytest.raises(ValueError, match="not exactly 2:4"):
    deploy.verify(w, 2, 4)
  w[1, 0] = w[0, 0] + w[1, 0] + w[2, 0] + w[3, 0] + 1.0  # a second nonzero in group 0
  w[0:4, 0] = [1.0, 1.0, 0.0, 0.0]
  with pytest.raises(ValueError, match="not exactly 1:4"):
    deploy.verify(w, 1, 4)
  k = deploy.from_dense(kernel((16, 8)), 2, 4)
  duplicate = np.zeros_like(np.asarray(k.packed))  # every index 0: positions not distinct
  with pytest.raises(ValueError, match="distinct"):
    deploy.verify(deploy.NMKernel(k.values, duplicate, 2, 4, (0,), (16, 8)))
  with pytest.raises(ValueError, match="m=4, expected 8"):
    deploy.verify(k, m=8)
  with pytest.raises(ValueError, match="values shape"):
    deploy.verify(deploy.NMKernel(k.values[:2], k.packed, 2, 4, (0,), (16, 8)))


def test_nm_dot_shape_mismatch_names_both_shapes():
  k = deploy.from_dense(kernel((32, 8)), 1, 4)
  with pytest.raises(ValueError, match=r"x shape \(2, 5\).*kernel shape \(32, 8\)"):
    deploy.nm_dot(np.ones((2, 5)), k)
  with pytest.raises(ValueError, match="impl='nope'"):
    deploy.nm_dot(np.ones((2, 32)), k, impl="nope")
  with pytest.raises(TypeError, match="NMKernel"):
    deploy.nm_dot(np.ones((2, 32)), np.ones((32, 8)))


def test_auto_dispatch_and_override():
  k = deploy.from_dense(kernel((32, 8)), 1, 4)
  on_gpu = jax.default_backend() == "gpu"
  assert deploy.resolve_impl(None, 8, k) == ("pallas" if on_gpu else "gather")
  assert deploy.resolve_impl(None, 65, k) == "expand"
  with deploy.use_impl("expand"):
    assert deploy.resolve_impl(None, 1, k) == "expand"
    assert deploy.resolve_impl("gather", 1, k) == "gather"


@pytest.mark.parametrize("rows,k_dim,r,n,m,dtype", [
    (1, 768, 64, 1, 4, jnp.float32),
    (8, 256, 128, 1, 8, jnp.float32),
    (64, 512, 64, 1, 16, jnp.float32),
    (3, 1024, 80, 1, 32, jnp.float32),   # R = 80: 10 packed chunks, a 2-column block
    (5, 128, 64, 2, 8, jnp.bfloat16),
])
def test_pallas_kernel_in_interpret_mode(rows, k_dim, r, n, m, dtype):
  w = kernel((k_dim, r), seed=m)
  k = jax.tree.map(jnp.asarray, deploy.from_dense(w, n, m, 0, dtype=dtype))
  x = jnp.asarray(kernel((rows, k_dim), seed=1), dtype)
  got = deploy.nm_dot(x, k, impl="pallas", interpret=True)
  want = deploy.nm_dot(x, k, impl="expand")
  assert got.shape == (rows, r) and got.dtype == dtype
  tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- models
def _random_finalized(model, inputs, recipe, seed=0):
  @jax.jit
  def make():
    params = model.init({"params": jax.random.key(seed)}, *inputs, train=False)["params"]
    # Non-zero biases and head, so the interceptor's bias handling is exercised.
    return jax.tree.map(lambda p: p + 0.01 * jax.random.normal(jax.random.key(1), p.shape),
                        params)
  params = jax.tree.map(np.asarray, make())
  finalized = jax.jit(lambda p: pgf.finalize(p, recipe))(params)
  return finalized, deploy.compress_params(params, recipe)


def _apply(model, params, inputs, impl=None):
  fn = jax.jit(lambda p, *a: model.apply({"params": p}, *a, train=False))
  if impl is None:
    return fn(params, *inputs)
  with deploy.intercept(impl=impl):
    return fn(params, *inputs)


def test_vit_runs_on_compressed_params():
  model = vit_lib.ViT(num_classes=10, width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4,
                      pool_type="gap")
  images = (jnp.asarray(kernel((2, 16, 16, 3))),)
  recipe = pgf.Recipe(method="ste", rules=(
      (r".*/mlp/fc[12]/kernel", "1:16"), (r".*/attn/(query|key|value)/kernel", "1:4", 0),
      (r".*/attn/out/kernel", "1:8", (0, 1))))
  finalized, compressed = _random_finalized(model, images, recipe)
  kinds = [type(x).__name__ for x in jax.tree.leaves(compressed, is_leaf=deploy.is_compressed)]
  assert kinds.count("NMKernel") == 6
  want = _apply(model, finalized, images)
  got = _apply(model, compressed, images, "auto")  # 32 rows: the gather path on CPU
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_t5_runs_on_compressed_params():
  config = t5_lib.get_config("tiny", vocab_size=64, num_encoder_layers=1, num_decoder_layers=1)
  model = t5_lib.T5(config)
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 64, (2, 8)), jnp.int32)
  inputs = (tokens, t5_lib.shift_right(tokens))
  recipe = pgf.Recipe(method="ste", rules=(
      (r".*/mlp/(wi_0|wi_1|wo)/kernel", "1:8"), (r".*attention/(query|key|value)/kernel", "2:4")))
  finalized, compressed = _random_finalized(model, inputs, recipe)
  want = _apply(model, finalized, inputs)
  got = _apply(model, compressed, inputs, "auto")  # 16 rows: the gather path on CPU
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_dense_general_with_unusual_axes():
  """Contracting axes not at the end, in reverse order, and grouping along an output axis."""
  x = jnp.asarray(kernel((4, 3, 5, 2)))
  for axis, k_axis, m in [((1, 2), (1, 0), 5), ((-1,), (0,), 2), ((-1,), (1,), 4)]:
    layer = nn.DenseGeneral((8,) if len(axis) == 2 else 16, axis=axis)
    params = layer.init(jax.random.key(0), x)["params"]
    k = deploy.from_dense(params["kernel"], 1, m, k_axis)
    params = dict(params, bias=params["bias"] + 0.5)
    want = layer.apply({"params": dict(params, kernel=k.dense())}, x)
    with deploy.intercept():
      got = layer.apply({"params": dict(params, kernel=k)}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- CLI, demo
def run_cli(*args):
  result = subprocess.run([sys.executable, "-m", "pgf.deploy", *args], cwd=ROOT,
                          capture_output=True, text=True, env=ENV)
  assert result.returncode == 0, result.stderr
  return result.stdout


def test_report_for_vit_b16():
  out = run_cli("--config=configs/vit_1_16.py", "--report")
  assert "vit B/16: 24 N:M kernels" in out
  assert "| encoder/encoderblock_0/mlp/fc1/kernel | (768, 3072) | 1:16 | 4 | 4,718,592 | " \
         "368,640 | 0.0781 |" in out
  assert "| 24 N:M kernels | 108.00 MiB | 8.44 MiB | 0.0781 |" in out


def test_report_bytes_match_the_written_file():
  params = {"a": {"kernel": kernel((96, 40))}, "b": {"kernel": kernel((4, 8, 24)),
                                                     "bias": np.zeros(24, np.float32)}}
  recipe = pgf.Recipe(method="ste", rules=((r"a/kernel", "1:32"), (r"b/kernel", "1:8", (0, 1))))
  report = deploy.size_report(jax.eval_shape(lambda: params), recipe, "float32")
  tree = deploy.compress_params(params, recipe)
  kernels = {k["path"]: k for k in report["kernels"]}
  assert kernels["a/kernel"]["compressed_bytes"] == tree["a"]["kernel"].nbytes
  assert kernels["b/kernel"]["compressed_bytes"] == tree["b"]["kernel"].nbytes
  assert report["other_bytes"] == 24 * 4


def test_trained_demo_exported_reloaded_same_accuracy(tmp_path):
  """Done-when of the deploy issue: train, export with the CLI, reload compressed, evaluate."""
  from pgf.train import tasks
  from pgf.train import train_and_evaluate
  from tests.test_train_vit import load_config, tiny_vit
  config = tiny_vit(load_config(os.path.join(ROOT, "configs", "vit_1_16.py"), "demo"), patch=4)
  config.update(total_steps=12, log_every=12, eval_every=12, checkpoint_every=12,
                eval_batch_size=300)
  workdir = tmp_path / "run"
  summary = train_and_evaluate(config, str(workdir))
  out = tmp_path / "model.safetensors"
  stdout = run_cli(f"--workdir={workdir}", f"--out={out}")
  assert "step 12" in stdout and "2 N:M kernels" in stdout
  assert "2 N:M kernels verified" in run_cli(f"--verify={out}")
  params = deploy.load(str(out))
  fc1 = params["encoder"]["encoderblock_0"]["mlp"]["fc1"]["kernel"]
  assert isinstance(fc1, deploy.NMKernel) and (fc1.n, fc1.m) == (1, 16)
  task = tasks.build_task(config)
  with deploy.intercept():
    eval_step = jax.jit(task.eval_fn)
    correct = count = 0.0
    for batch in task.eval_batches():
      sums = eval_step(params, batch)
      correct += float(sums["accuracy"])
      count += float(sums["count"])
  assert correct / count == summary["deployed_accuracy"]


def test_bench_smoke(capsys):
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  import bench_deploy
  bench_deploy.main(["--smoke"])
  out = capsys.readouterr().out
  assert "| 64x32 | 1:4 | float32 | 1 |" in out and "| float32 | 8 |" in out
