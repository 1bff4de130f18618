"""ResNet with N:M conv kernels: masks on HWIO kernels, the model, BatchNorm state through the
train loop, the Table 6 configs against ResNet-50's abstract params, sharding and FLOPs."""

import glob
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pgf
from pgf import config_lib, deploy
from pgf.analysis import export
from pgf.models.resnet import ResNet
from pgf.train import build_recipe, train_and_evaluate

CONV_RULE = r"stage_\d+/block_\d+/(conv_\d|proj)/kernel"


def tiny_resnet(**kwargs):
  return ResNet(**dict(dict(num_classes=10, stage_sizes=(1, 1), width=8, stem="cifar"),
                       **kwargs))


def tiny_variables(model=None, size=8):
  model = model or tiny_resnet()
  return model, model.init(jax.random.key(0), jnp.zeros((2, size, size, 3)), train=False)


# ----------------------------------------------------------------------------- conv masks
@pytest.mark.parametrize("n,m", [(1, 8), (2, 8), (3, 4)])
def test_conv_mask_along_input_channels_is_exact_per_output_channel_and_tap(n, m):
  w = jax.random.normal(jax.random.key(1), (3, 3, 16, 5))
  mask = np.asarray(pgf.nm_mask(w, n, m, axis=2))
  groups = mask.reshape(3, 3, 16 // m, m, 5)  # (H, W, groups of I, m, O)
  np.testing.assert_array_equal(groups.sum(axis=3), n)
  # The kept ones are the n largest |w| of their group (ties impossible with normal draws).
  a = np.abs(np.asarray(w)).reshape(3, 3, 16 // m, m, 5)
  kth = -np.sort(-a, axis=3)[:, :, :, n - 1:n, :]
  np.testing.assert_array_equal(groups, a >= kth)


@pytest.mark.parametrize("n,m", [(1, 8), (2, 8)])
def test_conv_mask_over_the_receptive_field_groups_h_w_i_flattened(n, m):
  # 4 input channels: every group of 8 spans two taps, which axis=2 alone cannot group.
  w = jax.random.normal(jax.random.key(2), (2, 3, 4, 5))
  mask = np.asarray(pgf.nm_mask(w, n, m, axis=(0, 1, 2)))
  flat = mask.reshape(24 // m, m, 5)  # HWI flattened in order, per output channel
  np.testing.assert_array_equal(flat.sum(axis=1), n)
  a = np.abs(np.asarray(w)).reshape(24 // m, m, 5)
  np.testing.assert_array_equal(flat, a >= -np.sort(-a, axis=1)[:, n - 1:n, :])
  assert pgf.is_nm(mask, n, m, (0, 1, 2)) and not pgf.is_nm(mask, n, m, 2)


def test_conv_rules_sparsify_and_finalize_every_conv_kernel_of_the_model():
  _, variables = tiny_variables()
  params = variables["params"]
  for axis, group in ((2, lambda k: k.reshape(*k.shape[:2], -1, 8, k.shape[3])),
                      ((0, 1, 2), lambda k: k.reshape(-1, 8, k.shape[3]))):
    recipe = pgf.Recipe(method="ste", rules=((CONV_RULE, "1:8", axis),), total_steps=10,
                        dense_fraction=0.0)
    matched = pgf.check_params(params, recipe)
    assert sorted(matched) == sorted(
        f"stage_{s}/block_0/{c}/kernel" for s in (0, 1) for c in ("conv_0", "conv_1", "conv_2",
                                                                   "proj"))
    final = pgf.finalize(params, recipe)
    for path in matched:
      kernel = np.asarray(final[path.split("/")[0]][path.split("/")[1]][path.split("/")[2]]
                          ["kernel"])
      np.testing.assert_array_equal((group(kernel) != 0).sum(axis=-2), 1)
    # Stem and head stay dense.
    np.testing.assert_array_equal(final["stem_conv"]["kernel"], params["stem_conv"]["kernel"])
    np.testing.assert_array_equal(final["head"]["kernel"], params["head"]["kernel"])


def test_conv_rule_errors_name_the_kernel_and_the_axis():
  _, variables = tiny_variables()
  params = variables["params"]
  with pytest.raises(ValueError, match=r"ambiguous.*2 or \(0, 1, 2\) for a conv kernel HWIO"):
    pgf.check_params(params, pgf.Recipe(method="ste", rules=((CONV_RULE, "1:8"),),
                                        total_steps=10))
  with pytest.raises(ValueError, match=r"stage_0/block_0/conv_0/kernel.*axis 4 is out of range"):
    pgf.check_params(params, pgf.Recipe(method="ste", rules=((CONV_RULE, "1:8", 4),),
                                        total_steps=10))
  # stem_conv has 3 input channels: M=8 does not divide them along axis 2.
  with pytest.raises(ValueError, match=r"stem_conv/kernel shape \(3, 3, 3, 8\).*length 3 of "
                                       r"axis 2 to be divisible by 8"):
    pgf.check_params(params, pgf.Recipe(method="ste", rules=((r".*conv.*/kernel", "1:8", 2),),
                                        total_steps=10))


@pytest.mark.parametrize("axis", [2, (0, 1, 2)])
def test_export_and_deploy_conv_kernels(tmp_path, axis):
  model, variables = tiny_variables()
  params = variables["params"]
  recipe = pgf.Recipe(method="ste", rules=((CONV_RULE, "1:8", axis),), total_steps=10)
  final = pgf.finalize(params, recipe)
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
  want = model.apply({"params": final, "batch_stats": variables["batch_stats"]}, x, train=False)
  compressed = export.compress_params(params, recipe)
  assert len(compressed) == 8 and all(c.axis == ((2,) if axis == 2 else (0, 1, 2))
                                      for c in compressed.values())
  path = str(tmp_path / "resnet.safetensors")
  deploy.save(path, deploy.compress_params(params, recipe))
  loaded = deploy.load(path)
  assert isinstance(loaded["stage_1"]["block_0"]["conv_1"]["kernel"], deploy.NMKernel)
  with deploy.intercept():  # nn.Conv layers meet NMKernel leaves
    got = model.apply({"params": loaded, "batch_stats": variables["batch_stats"]}, x,
                      train=False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the model
def test_resnet50_shapes_and_parameter_count():
  imagenet = ResNet(num_classes=1000)
  params = jax.eval_shape(lambda: imagenet.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                                train=False))["params"]
  # torchvision's resnet50 has 25,557,032 parameters.
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == 25_557_032
  assert params["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
  assert params["stage_3"]["block_2"]["conv_2"]["kernel"].shape == (1, 1, 512, 2048)
  assert sorted(params["stage_1"]) == [f"block_{b}" for b in range(4)]
  cifar = ResNet(num_classes=10, stem="cifar")
  out = jax.eval_shape(lambda: cifar.init_with_output(jax.random.key(0), jnp.zeros((2, 32, 32, 3)),
                                                      train=False))
  logits, variables = out
  assert logits.shape == (2, 10) and variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
  assert variables["batch_stats"]["stage_0"]["block_0"]["bn_1"]["mean"].shape == (64,)


def test_batchnorm_uses_batch_statistics_in_train_and_running_ones_in_eval():
  model, variables = tiny_variables()
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(4), (4, 8, 8, 3))
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  before = variables["batch_stats"]["stem_bn"]["mean"]
  after = updates["batch_stats"]["stem_bn"]["mean"]
  assert not np.allclose(before, after)  # moved towards the batch mean (momentum 0.9)
  eval_old = model.apply(variables, x, train=False)
  eval_new = model.apply({"params": variables["params"], **updates}, x, train=False)
  assert not np.allclose(eval_old, eval_new)  # eval reads the running statistics
  # In eval the output of one example does not depend on the rest of the batch.
  np.testing.assert_allclose(model.apply(variables, x[:1], train=False), eval_old[:1],
                             rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- train loop
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESNET_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "resnet*.py")))


def tiny_config(name="resnet50_1_8.py", arg="demo"):
  config = config_lib.load(os.path.join(ROOT, "configs", f"{name}:{arg}" if arg else name))
  config.model.update(stage_sizes=(1, 1), width=8)
  config.update(log_every=1, eval_every=0, checkpoint_every=100, async_checkpointing=False)
  return config


def test_one_step_on_mock_cifar10_updates_batch_stats(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = tiny_config(arg=None)
  config.data.workers = 0
  config.update(batch_size=4, eval_batch_size=4, total_steps=1)
  config.optim.update(warmup_epochs=0.0, warmup_steps=0)
  with tfds.testing.mock_data(num_examples=8):
    summary = train_and_evaluate(config, str(tmp_path))
  assert summary["final_step"] == 1
  for kind in ("current", "deployed"):
    assert 0.0 <= summary[f"{kind}_accuracy"] <= 1.0 and np.isfinite(summary[f"{kind}_loss"])
  stats = summary["state"]["model_state"]["batch_stats"]
  # Initial running statistics are mean 0, var 1: one train step moved them.
  assert np.any(np.asarray(stats["stem_bn"]["mean"]) != 0)
  assert np.any(np.asarray(stats["stage_1"]["block_0"]["bn_1"]["var"]) != 1)
  assert json.loads((tmp_path / "config.json").read_text())["data"]["name"] == "cifar10"


def test_demo_trains_deploys_exact_nm_and_resumes_with_batch_stats(tmp_path):
  config = tiny_config()
  config.update(total_steps=8, log_every=4, eval_every=8, checkpoint_every=4)
  summary = train_and_evaluate(config, str(tmp_path / "a"))
  lines = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
  train_lines = [l for l in lines if l["kind"] == "train"]
  assert train_lines[-1]["phase"] == "finetune"
  assert train_lines[-1]["sparsity"] == pytest.approx(7 / 8)
  state = summary["state"]
  deployed = pgf.finalize(state["params"], build_recipe(config, 8))
  for s in (0, 1):
    for name in ("conv_0", "conv_1", "conv_2", "proj"):
      kernel = np.asarray(deployed[f"stage_{s}"]["block_0"][name]["kernel"])
      groups = kernel.reshape(kernel.shape[0], kernel.shape[1], -1, 8, kernel.shape[3])
      np.testing.assert_array_equal((groups != 0).sum(axis=3), 1)  # 1:8 along axis 2
  assert 0.0 <= summary["deployed_accuracy"] <= 1.0
  # Resume: drop the newest checkpoint and rerun; steps 5..8 are redone from the step-4
  # checkpoint, BatchNorm statistics included, and end bit-identical.
  shutil.rmtree(tmp_path / "a" / "checkpoints" / "8")
  resumed = train_and_evaluate(config, str(tmp_path / "a"))["state"]
  for key in ("params", "model_state"):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed[key]),
                 jax.device_get(state[key]))
  assert resumed["model_state"]["batch_stats"]["stem_bn"]["var"].shape == (8,)
