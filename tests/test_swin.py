"""SwinV2 (paper Table 3): model, configs, trainer, QK decay, sharding and FLOPs."""

import functools
import glob
import importlib.util
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

import pgf
from pgf.families import swin as config_swin
from pgf.train import config_lib, sharding
from pgf.analysis import flops
from pgf.models import swin
from pgf.train import build_recipe, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWIN_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "swin_*.py")))
# The methods Table 3 reports, plus dense and the combined MDGF+SDGF.
METHODS = ("dense", "sr_ste", "mdgf_exp", "sdgf_stepwise", "sdgf_geometric",
           "mdgf_exp+sdgf_geometric")
B_PARAMS = 87_918_816  # swinv2_base_window16_256, 1000 classes


def load_config(path, arg=None):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def flat(params):
  return {"/".join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


@functools.lru_cache(maxsize=None)
def swin_b_params():
  model = swin.SwinV2(num_classes=1000, **swin.decode_variant("B"))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 256, 256, 3)),
                                           train=False))["params"]


def tiny(**overrides):
  kwargs = dict(num_classes=10, embed_dim=16, depths=(2, 1), num_heads=(2, 4), window_size=4,
                patch_size=2)
  kwargs.update(overrides)
  return swin.SwinV2(**kwargs)


_IMAGES = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)


# ----------------------------------------------------------------------------- the model
def test_swin_b_param_count_and_layout():
  params = flat(swin_b_params())
  assert swin.param_count(swin_b_params()) == B_PARAMS
  block = "stages_2/blocks_17/attn"
  assert params[f"{block}/query/kernel"].shape == (512, 16, 32)
  assert f"{block}/key/bias" not in params and f"{block}/query/bias" in params  # K: no bias
  assert params[f"{block}/logit_scale"].shape == (16,)
  assert params[f"{block}/cpb_mlp/fc2/kernel"].shape == (512, 16)
  assert params["stages_3/downsample/reduction/kernel"].shape == (2048, 1024)
  assert "stages_0/downsample/reduction/kernel" not in params
  assert params["stages_3/blocks_1/mlp/fc1/kernel"].shape == (1024, 4096)
  ff = [k for k in params if re.fullmatch(config_swin.SWIN_FF, k)]
  qk = [k for k in params if re.fullmatch(config_swin.SWIN_QK, k)]
  assert len(ff) == 2 * 24 and len(qk) == 2 * 24


def test_window_shrinks_to_the_feature_map_and_stops_shifting():
  # swinv2_base_window16_256: 64, 32, 16, 8 tokens per side; the last stage's window is 8.
  assert swin.stage_geometry(64, 16, 4) == [(64, 16, 8), (32, 16, 8), (16, 16, 0), (8, 8, 0)]
  assert swin.stage_geometry(8, 4, 3) == [(8, 4, 2), (4, 4, 0), (2, 2, 0)]
  with pytest.raises(ValueError, match="not divisible by window_size=7"):
    swin.stage_geometry(64, 7, 4)


def test_shift_mask_allows_exactly_the_pairs_that_were_neighbours():
  side, window, shift = 8, 4, 2
  mask = swin.shift_mask(side, window, shift)
  # Brute force: rolled position r holds original (r + shift) % side; two tokens of a window
  # may attend iff the roll did not wrap between them (original offset == rolled offset).
  rolled = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1)
  original = (rolled + shift) % side
  pos_r = swin.window_partition(rolled[None], window)
  pos_o = swin.window_partition(original[None], window)
  same = np.all((pos_o[:, :, None] - pos_o[:, None]) == (pos_r[:, :, None] - pos_r[:, None]), -1)
  np.testing.assert_array_equal(mask == 0, same)
  assert np.all(mask[0] == 0) and not np.all(mask[-1] == 0)  # only edge windows are masked


def test_shifted_block_attends_only_to_former_neighbours():
  """Token (0, 0) shares a shifted window with the far corner but must not see it."""
  block = swin.SwinBlock(num_heads=2, window=4, shift=2)
  x = np.random.default_rng(1).normal(size=(1, 8, 8, 16)).astype(np.float32)
  variables = block.init(jax.random.key(0), x, train=False)
  apply = jax.jit(lambda x: block.apply(variables, x, train=False))
  base = apply(x)
  far, near = x.copy(), x.copy()
  far[0, 7, 7] += 5.0   # same rolled window as (0, 0), other side of the wrap
  near[0, 1, 1] += 5.0  # a real neighbour
  np.testing.assert_allclose(apply(far)[0, 0, 0], base[0, 0, 0], atol=1e-5)
  assert not np.allclose(apply(near)[0, 0, 0], base[0, 0, 0], atol=1e-3)


def test_tiny_forward_shapes_and_logit_scale_clamp():
  # (Train mode with drop-path runs in test_one_step_on_mock_imagenet: drop_path 0.1.)
  model = tiny(head_zero_init=False)
  variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), _IMAGES,
                                                           train=False)
  apply = jax.jit(model.apply, static_argnames="train")
  logits = apply(variables, _IMAGES, train=False)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  params = flat(variables["params"])
  np.testing.assert_allclose(params["stages_0/blocks_0/attn/logit_scale"], np.log(10.0),
                             rtol=1e-6)

  def with_scale(value):  # every head's logit scale set to `value`
    p = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, value) if "logit_scale" in str(path) else x,
        variables["params"])
    return apply({"params": p}, _IMAGES, train=False)

  # Clamped at log(100): a larger scale changes nothing, a smaller one does.
  np.testing.assert_allclose(with_scale(np.log(100.0)), with_scale(50.0), rtol=1e-5)
  assert not np.allclose(with_scale(np.log(100.0)), with_scale(1.0))


def test_swin_runs_on_compressed_params():
  """Deploy: the Flax interceptor swaps N:M kernels into the unchanged SwinV2."""
  from pgf import deploy  # pylint: disable=g-import-not-at-top
  model = tiny(embed_dim=32, depths=(2,), num_heads=(2,), head_zero_init=False)
  recipe = pgf.Recipe(method="ste", rules=config_swin.swin_rules("1:8", qk="1:8"))
  params = jax.jit(model.init, static_argnames="train")(jax.random.key(0), _IMAGES,
                                                        train=False)["params"]
  params = jax.tree.map(np.asarray, params)
  finalized = pgf.finalize(params, recipe)
  compressed = deploy.compress_params(params, recipe)
  kinds = [type(x).__name__ for x in jax.tree.leaves(compressed, is_leaf=deploy.is_compressed)]
  assert kinds.count("NMKernel") == 2 * 4
  apply = jax.jit(lambda p: model.apply({"params": p}, _IMAGES, train=False))
  want = apply(finalized)
  with deploy.intercept(impl="expand"):
    got = apply(compressed)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  from pgf.deploy import model as deploy_model  # pylint: disable=g-import-not-at-top
  config = load_config(os.path.join(ROOT, "configs", "swin_1_16.py"))
  _, abstract, _ = deploy_model.abstract_model(config)
  report = deploy_model.size_report(abstract, deploy_model.config_recipe(config))
  assert len(report["kernels"]) == 48


# ----------------------------------------------------------------------------- configs
def test_every_swin_config_x_method_fits_swinv2_b():
  """Every Table 3 row x every method fits SwinV2-B's kernels as the trainer builds them."""
  params = swin_b_params()
  names = {os.path.basename(p) for p in SWIN_CONFIGS}
  assert names == {"swin_1_4.py", "swin_1_8.py", "swin_1_16.py", "swin_1_32.py",
                   "swin_1_8_qk_1_8.py"}
  for path in SWIN_CONFIGS:
    for method in METHODS:
      config = load_config(path, f"method={method}")
      config_lib.validate(config)
      assert config.model.name == "swin" and config.model.variant == "B"
      recipe, _ = pgf.fit_sdgf_k(params, build_recipe(config, 100_000))
      matched = pgf.check_params(params, recipe)
      assert {p.split("/")[-2] for p in matched} >= {"fc1", "fc2"}
      assert not any("cpb_mlp" in p or "/out/" in p or p.startswith(("patch_embed", "head"))
                     or "downsample" in p for p in matched)
      if "qk" in os.path.basename(path):
        assert {p.split("/")[-2] for p in matched} == {"fc1", "fc2", "query", "key"}
  config = load_config(SWIN_CONFIGS[0])
  assert (config.data.image_size, config.batch_size, config.total_epochs,
          config.optim.warmup_epochs) == (256, 2048, 350.0, 20.0)
  assert config.data.randaugment and config.mixup.mixup_alpha == 0.5
  assert config.model.dtype == "bfloat16"


def test_every_swin_demo_x_method_fits_its_model():
  for path in SWIN_CONFIGS:
    for method in METHODS:
      config = load_config(path, f"demo,method={method}")
      config_lib.validate(config)
      assert config.data.name == "digits" and config.model.dtype == "float32"
      model = config_swin.swin_model(config, 10)
      params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                                                 train=False))["params"]
      recipe, _ = pgf.fit_sdgf_k(params, build_recipe(config, config.total_steps))
      pgf.check_params(params, recipe)


@pytest.mark.parametrize("field, value, fragment", [
    ("model.variant", "X", "config.model.variant='X'"),
    ("model.window_size", 7, "config.model.window_size=7"),
    ("model.window_size", 0, "config.model.window_size=0"),
    ("model.num_heads", (3, 6, 12), "config.model.depths"),
    ("model.num_heads", (3, 6, 12, 24), "stage 0 width 128"),
    ("data.image_size", 250, "config.data.image_size=250"),
    ("model.drop_path", 1.5, "config.model.drop_path=1.5"),
    ("data.name", "mnist", "config.data.name='mnist'"),
])
def test_bad_swin_fields_are_named(field, value, fragment):
  config = load_config(os.path.join(ROOT, "configs", "swin_1_16.py"))
  config_lib.apply_overrides(config, {field: value})
  with pytest.raises(ValueError, match=re.escape(fragment)):
    config_lib.validate(config)


# ----------------------------------------------------------------------------- the trainer
def tiny_config(config):
  config.model.update(embed_dim=16, depths=(1, 1), num_heads=(2, 2), window_size=4, patch_size=4)
  config.update(log_every=1, eval_every=0, checkpoint_every=100, async_checkpointing=False)
  return config


def test_one_step_on_mock_imagenet(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = tiny_config(load_config(os.path.join(ROOT, "configs", "swin_1_16.py")))
  config.data.update(image_size=32, workers=0)
  config.update(batch_size=4, eval_batch_size=4, total_steps=1)
  config.optim.update(warmup_epochs=0.0, warmup_steps=0)
  with tfds.testing.mock_data(num_examples=8):
    summary = train_and_evaluate(config, str(tmp_path))
  assert summary["final_step"] == 1
  for kind in ("current", "deployed"):
    assert 0.0 <= summary[f"{kind}_accuracy"] <= 1.0 and np.isfinite(summary[f"{kind}_loss"])
  written = json.loads((tmp_path / "config.json").read_text())
  assert written["data"]["name"] == "imagenet2012" and written["model"]["name"] == "swin"


def test_demo_trains_and_deploys_exact_nm(tmp_path):
  config = load_config(os.path.join(ROOT, "configs", "swin_1_8_qk_1_8.py"), "demo")
  config.model.update(depths=(2,), num_heads=(2,))  # one stage: window 4, shifted, faster
  config.update(total_steps=10, log_every=5, eval_every=10, checkpoint_every=10,
                async_checkpointing=False)
  summary = train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  last = [l for l in lines if l["kind"] == "train"][-1]
  assert last["phase"] == "finetune" and last["sparsity"] == pytest.approx(7 / 8)
  deployed = flat(pgf.finalize(summary["state"]["params"], build_recipe(config, 10)))
  checked = 0
  for path, kernel in deployed.items():
    if re.fullmatch(config_swin.SWIN_FF, path) or re.fullmatch(config_swin.SWIN_QK, path):
      groups = np.asarray(kernel).reshape(kernel.shape[0] // 8, 8, -1)
      np.testing.assert_array_equal((groups != 0).sum(axis=1), 1)
      checked += 1
  assert checked == 2 * 4  # 2 blocks x (fc1, fc2, query, key)
  assert np.all(np.asarray(deployed["stages_0/blocks_0/attn/value/kernel"]) != 0)
  assert 0.0 <= summary["deployed_accuracy"] <= 1.0


def test_qk_mask_values_decay_with_the_step():
  """The authors' Swin Q/K/V never received the step, so their pruned weights never decayed.
  Here the QK rule's pruned weights (forward) and their gradients (MDGF) shrink with D(step)."""
  config = load_config(os.path.join(ROOT, "configs", "swin_1_8_qk_1_8.py"), "demo")
  model = tiny(embed_dim=32, depths=(1,), num_heads=(2,))
  params = jax.jit(model.init, static_argnames="train")(jax.random.key(0), _IMAGES,
                                                        train=False)["params"]
  total = 1000
  recipe = build_recipe(config, total)
  qk = "stages_0/blocks_0/attn/query/kernel"
  w = np.asarray(flat(params)[qk])
  pruned = ~np.asarray(pgf.nm_mask(jnp.asarray(w), n=1, m=8, axis=0))
  tx = pgf.gradient_flow(recipe)
  ones = jax.tree.map(jnp.ones_like, params)

  @jax.jit
  def forward_and_update(step):
    state = tx.init(params)._replace(count=step)
    update, _ = tx.update(ones, state, params)
    return flat(pgf.sparsify(params, recipe, state))[qk], flat(update)[qk]

  ratios, grads = [], []
  for step in (recipe.dense_steps, recipe.dense_steps + 50, recipe.dense_steps + 200,
               recipe.finetune_start):
    forward, update = map(np.asarray, forward_and_update(jnp.asarray(step, jnp.int32)))
    ratios.append(float(np.mean(forward[pruned] / w[pruned])))
    grads.append(float(np.mean(update[pruned])))
    np.testing.assert_allclose(ratios[-1], float(recipe.decay(step)), rtol=1e-5, atol=1e-7)
  assert ratios[0] == pytest.approx(1.0)
  assert ratios[0] > ratios[1] > ratios[2] > ratios[3] == 0.0
  np.testing.assert_allclose(grads, ratios, rtol=1e-5, atol=1e-7)  # decayed gradient: g * D


# ----------------------------------------------------------------------------- sharding, flops
def test_default_sharding_rules_place_every_swin_b_leaf():
  mesh = AbstractMesh((1, 4, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  rules = sharding.parse_rules(sharding.DEFAULT_RULES)
  specs = {path: sharding.leaf_spec("params/" + path, leaf.shape, rules, mesh)
           for path, leaf in flat(swin_b_params()).items()}
  block = "stages_2/blocks_5"
  assert specs[f"{block}/mlp/fc1/kernel"] == PartitionSpec("fsdp", "model")
  assert specs[f"{block}/mlp/fc2/kernel"] == PartitionSpec("model", "fsdp")
  assert specs[f"{block}/attn/key/kernel"] == PartitionSpec("fsdp", "model", None)
  assert specs[f"{block}/attn/out/kernel"] == PartitionSpec("model", None, "fsdp")
  for name in ("cpb_mlp/fc1/kernel", "cpb_mlp/fc2/kernel", "logit_scale"):
    assert specs[f"{block}/attn/{name}"] == PartitionSpec(), name
  assert "fsdp" in specs["stages_3/downsample/reduction/kernel"]


def test_swin_flops():
  matmuls = flops.swin_matmuls("B", 256)
  names = set(flat(swin_b_params()))
  assert all(mm.name in names for mm in matmuls if mm.kernel)
  kernels = {mm.name: mm for mm in matmuls}
  # Stage 0: 64x64 tokens, width 128, 16x16 windows; stage 3: 8x8 tokens, one 8x8 window.
  assert kernels["stages_0/blocks_1/attn/scores"].flops == 2 * 4096 * 128 * 256
  assert kernels["stages_3/blocks_0/attn/weighted_sum"].flops == 2 * 64 * 64 * 1024
  assert kernels["stages_1/downsample/reduction/kernel"].flops == 2 * 1024 * 512 * 256
  dense = flops.inference_flops(matmuls)
  sparse = flops.inference_flops(matmuls, ((config_swin.SWIN_FF, "1:16"),))
  assert sparse["mlp"] == pytest.approx(dense["mlp"] / 16)
  assert sparse["attention"] == dense["attention"] and dense["merging"] > 0
  # By hand, per block 12·T·C² (Q, K, V, out, MLP) + 2·T·N·C (scores, weighted sum) MACs, and
  # T/4·4C·2C per merging: 21.759 GMACs = 43.52 GFLOPs per 256-px image.
  macs = sum(depth * (12 * t * c * c + 2 * t * n * c) for depth, t, c, n in (
      (2, 4096, 128, 256), (2, 1024, 256, 256), (18, 256, 512, 256), (2, 64, 1024, 64)))
  macs += sum(t * 4 * c * 2 * c for t, c in ((1024, 128), (256, 256), (64, 512)))
  assert dense["total"] == 2 * macs
  assert flops.inference_flops(flops.vit_matmuls("B/16"))["merging"] == 0.0
  config = load_config(os.path.join(ROOT, "configs", "swin_1_16.py"), "demo")
  result = flops.training_flops(flops.matmuls_from_config(config), build_recipe(config, 100),
                                config.batch_size)
  assert 0 < result["ratio"] < 1
  assert "SwinV2" in flops.describe(config, steps=100)
