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


def test_auto_never_gathers_on_tpu():
  # The TPU compiler counts 50-300x the dense bytes for "gather" (experiments/aot_nm_dot.py):
  # "auto" picks the Pallas kernel where Mosaic tiles the shape, else "expand", at any batch.
  small = deploy.from_dense(kernel((32, 8)), 1, 4)        # R8 = 1: a whole-array column block
  wide = deploy.from_dense(kernel((64, 8000)), 1, 4)      # R8 = 1000: no 128-aligned tiling
  for rows in (1, 8, 64, 65, 512):
    assert deploy.resolve_impl(None, rows, small, backend="tpu") == "pallas"
    assert deploy.resolve_impl(None, rows, wide, backend="tpu") == "expand"
    with deploy.use_backend("tpu"):
      assert deploy.resolve_impl(None, rows, small) == "pallas"
  assert deploy.resolve_impl(None, 8, wide, backend="cpu") == "gather"
  with pytest.raises(ValueError, match="backend='tpuu'"):
    with deploy.use_backend("tpuu"):
      pass


def test_pallas_supported_checks_the_target_backend():
  from pgf.deploy import pallas
  # 1000 packed columns: Triton takes 8-column blocks; Mosaic needs 128-multiples or all of
  # them, and a 1000-wide (8000-column) block is refused.
  assert pallas.supported(8, 1, 16, 48, 1000, backend="gpu")
  assert not pallas.supported(8, 1, 16, 48, 1000, backend="tpu")
  assert pallas.tiles(8, 1, 16, 48, 384, backend="tpu") == (128, 16, 16)
  assert pallas.tiles(8, 1, 16, 48, 384, backend="gpu") == (32, 16, 16)
  # 1:4 on TPU: block_g * M must be a multiple of 128 (an aligned lane slice): 32 groups.
  assert pallas.tiles(1, 1, 4, 192, 384, backend="tpu") == (128, 32, 16)
  # VMEM: a 2:4 8192 x 2048 kernel at 64 rows does not fit the scoped VMEM (Mosaic: "E1001
  # CompileTimeScopedVmemOom"); 1:4 does.
  assert not pallas.supported(64, 2, 4, 2048, 256, backend="tpu")
  assert pallas.supported(64, 1, 4, 2048, 256, backend="tpu")
  assert not pallas.supported(2000, 1, 4, 2048, 256, backend="tpu")
  with pytest.raises(ValueError, match="backend='metal'"):
    pallas.supported(8, 1, 16, 48, 384, backend="metal")


@pytest.mark.parametrize("rows,k_dim,r,n,m", [
    (1, 256, 1024, 1, 4),     # 1:4: 32 groups (128 lanes) per loop step, 2 steps
    (9, 256, 1024, 1, 16),    # rows padded to 16, 128-column blocks
    (3, 256, 72, 2, 32),      # R8 = 9: one whole-array column block
])
def test_pallas_tpu_tiling_in_interpret_mode(rows, k_dim, r, n, m):
  """The tiles the TPU lowering uses, run in the interpreter against the jnp reference."""
  from pgf.deploy import pallas
  w = kernel((k_dim, r), seed=m)
  k = jax.tree.map(jnp.asarray, deploy.from_dense(w, n, m, 0, dtype=jnp.float32))
  x = jnp.asarray(kernel((rows, k_dim), seed=2), jnp.float32)
  got = pallas.nm_matmul(x, k.values, k.packed, m=m, r=r, interpret=True, backend="tpu")
  want = deploy.nm_dot(x, k, impl="expand")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


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


# ===================================================================== round 2 (issue 28)
def test_round2_dense_general_with_descending_axes():
  """Finding 4: Flax sorts DenseGeneral's axes; the interceptor now does too (equal sizes gave
  wrong numbers, unequal sizes an error)."""
  for shape, axis in (((3, 4, 4), (-1, -2)), ((3, 4, 8), (2, 1))):
    x = jnp.asarray(kernel(shape, seed=1))
    layer = nn.DenseGeneral(6, axis=axis)
    params = layer.init(jax.random.key(0), x)["params"]
    assert params["kernel"].shape == (shape[1], shape[2], 6)
    params = dict(params, bias=params["bias"] + 0.5)
    k = deploy.from_dense(params["kernel"], 1, 4, (0, 1))
    want = layer.apply({"params": dict(params, kernel=k.dense())}, x)
    with deploy.intercept():
      got = layer.apply({"params": dict(params, kernel=k)}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_round2_save_load_returns_the_tree_exactly(tmp_path):
  """Finding 5: scalars keep shape (), lists and tuples stay lists and tuples, keys with '/'
  and int keys come back as they were."""
  tree = {"scale": np.float32(2.5), "count": np.asarray(7, np.int32),
          "layers": [{"kernel": deploy.from_dense(kernel((8, 4)), 1, 4, 0)},
                     {"kernel": kernel((8, 4), seed=2)}],
          "pair": (np.zeros(3, np.float32), np.ones((), np.float32)),
          "a/b": {"kernel": kernel((4, 2), seed=3)}, "a": {"b": {"kernel": kernel((4, 2))}},
          "by_id": {0: np.arange(3.0), 1: np.arange(2.0)}, "100%": np.ones(2)}
  path = str(tmp_path / "t.safetensors")
  deploy.save(path, tree)
  got = deploy.load(path, as_jax=False)
  assert jax.tree.structure(got, is_leaf=deploy.is_compressed) == jax.tree.structure(
      tree, is_leaf=deploy.is_compressed)
  for want, have in zip(jax.tree.leaves(tree, is_leaf=deploy.is_compressed),
                        jax.tree.leaves(got, is_leaf=deploy.is_compressed)):
    if deploy.is_compressed(want):
      np.testing.assert_array_equal(have.dense(), want.dense())
    else:
      assert np.shape(have) == np.shape(want) and np.asarray(have).dtype == np.asarray(want).dtype
      np.testing.assert_array_equal(have, want)
  # A Flax model accepts the reloaded scalar param (it used to come back with shape (1,)).
  class Scaled(nn.Module):
    @nn.compact
    def __call__(self, x):
      return x * self.param("scale", lambda _: jnp.float32(1.0))
  out = Scaled().apply({"params": {"scale": got["scale"]}}, jnp.ones(2))
  np.testing.assert_array_equal(out, [2.5, 2.5])


def _flip_byte(path, tensor):
  """Flips one byte inside `tensor`'s data in a safetensors file."""
  with open(path, "rb") as f:
    data = bytearray(f.read())
  size = int.from_bytes(data[:8], "little")
  meta = json.loads(data[8:8 + size])
  start, _ = meta[tensor]["data_offsets"]
  data[8 + size + start] ^= 0x10
  with open(path, "wb") as f:
    f.write(bytes(data))


@pytest.mark.parametrize("part", ["values", "indices"])
def test_round2_a_flipped_byte_is_an_error_in_load_and_verify(tmp_path, part):
  """Finding 5: the header's sha256 per tensor catches any changed byte (before, flipped
  values loaded silently and --verify exited 0)."""
  path = str(tmp_path / "m.safetensors")
  deploy.save(path, {"fc": {"kernel": deploy.from_dense(kernel((16, 8)), 1, 4, 0),
                            "bias": np.zeros(8, np.float32)}})
  deploy.load(path)
  _flip_byte(path, f"fc/kernel/{part}")
  with pytest.raises(ValueError, match=rf"tensor 'fc/kernel/{part}' does not match its sha256"):
    deploy.load(path)
  result = subprocess.run([sys.executable, "-m", "pgf.deploy", f"--verify={path}"], cwd=ROOT,
                          capture_output=True, text=True, env=ENV, timeout=300)
  assert result.returncode != 0 and "does not match its sha256" in result.stderr


def test_round2_files_of_the_first_format_still_load():
  """A file written by the previous pgf (pgf-nm-v1, no digests), committed as a fixture."""
  path = os.path.join(ROOT, "tests", "data", "deploy_v1.safetensors")
  assert deploy.read_header(path)["format"] == "pgf-nm-v1"
  got = deploy.load(path, as_jax=False)
  rng = np.random.default_rng(0)  # how the fixture was made
  w = rng.normal(size=(16, 8)).astype(np.float32)
  conv = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
  bias = rng.normal(size=(8,)).astype(np.float32)
  head = rng.normal(size=(8, 3)).astype(np.float32)
  np.testing.assert_array_equal(got["fc"]["kernel"].dense(), masked(w, 2, 4, 0))
  np.testing.assert_array_equal(got["conv"]["kernel"].dense(), masked(conv, 1, 4, (0, 1, 2)))
  np.testing.assert_array_equal(got["fc"]["bias"], bias)
  np.testing.assert_array_equal(got["head"]["kernel"], head)
  out = run_cli(f"--verify={path}")
  assert "2 N:M kernels verified" in out and "no digests" in out


def test_round2_damaged_or_foreign_files_give_pgf_errors(tmp_path):
  """Finding 9: truncated, random, .npz and wrong-header files name the problem."""
  good = str(tmp_path / "good.safetensors")
  deploy.save(good, {"fc": {"kernel": deploy.from_dense(kernel((16, 8)), 1, 4, 0)}})
  with open(good, "rb") as f:
    data = f.read()
  cases = {}
  cases["truncated"] = data[:len(data) - 20]
  cases["random"] = np.random.default_rng(0).bytes(500)
  npz = tmp_path / "x.npz"
  np.savez(npz, a=np.ones(3))
  cases["npz"] = npz.read_bytes()
  from safetensors.numpy import save_file
  for name, meta in (("no_header", None), ("bad_json", {"pgf": "{not json"}),
                     ("wrong_format", {"pgf": json.dumps({"format": "other", "kernels": {}})}),
                     ("bad_kernel", {"pgf": json.dumps({"format": "pgf-nm-v1",
                                                        "kernels": {"k": {"n": 1}}})})):
    path = tmp_path / f"{name}.safetensors"
    save_file({"k/values": np.ones((1, 1, 1), np.float32)}, str(path), metadata=meta)
    cases[name] = path.read_bytes()
  for name, content in cases.items():
    path = tmp_path / f"case_{name}.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{path.name}"):
      deploy.load(str(path))
  with pytest.raises(ValueError, match="no such file"):
    deploy.load(str(tmp_path / "missing.safetensors"))


class _ScanBlock(nn.Module):
  @nn.compact
  def __call__(self, h, _):
    return h + nn.Dense(8, name="fc")(h), None


class _ScanModel(nn.Module):
  @nn.compact
  def __call__(self, x):
    h, _ = nn.scan(_ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                   length=2)(name="layers")(x, None)
    return h


def test_round2_scanned_model_from_compressed_params_says_densify():
  """Finding 9: nn.scan slices a compressed kernel; the error now says to densify."""
  model = _ScanModel()
  x = jnp.asarray(kernel((3, 8)))
  params = model.init(jax.random.key(0), x)["params"]
  recipe = pgf.Recipe("ste", rules=((r"layers/fc/kernel", "1:4", {"axis": 1}),))
  compressed = deploy.compress_params(params, recipe)
  with pytest.raises(ValueError, match=r"nn.scan.*pgf.deploy.densify"):
    with deploy.intercept():
      model.apply({"params": compressed}, x)
  want = model.apply({"params": pgf.finalize(params, recipe)}, x)
  got = model.apply({"params": deploy.densify(compressed)}, x)
  np.testing.assert_allclose(got, want, rtol=1e-6)
