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
from pgf import deploy
from pgf.train import config_lib
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
    final = jax.jit(lambda p, recipe=recipe: pgf.finalize(p, recipe))(params)
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
  recipe = build_recipe(config, 8)
  deployed = jax.jit(lambda p: pgf.finalize(p, recipe))(state["params"])
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


# ----------------------------------------------------------------------------- configs
PAPER_METHODS = ("sr_ste", "mdgf_exp")  # the methods of Table 6


def resnet50_abstract_params(config):
  from pgf.families.resnet import resnet_model
  model = resnet_model(config, 10)
  size = config.data.image_size
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                           train=False))["params"]


@pytest.mark.parametrize("path", RESNET_CONFIGS, ids=os.path.basename)
def test_every_config_and_paper_method_fits_full_size_resnet50(path):
  assert len(RESNET_CONFIGS) == 2
  doc = open(path).read()
  assert "dense 85.09" in doc and ":demo" in doc
  params = None
  for method in PAPER_METHODS + ("sdgf_geometric",):
    for group, axis in (("in", 2), ("hwi", (0, 1, 2))):
      config = config_lib.load(f"{path}:method={method},group={group}")
      assert config.model.stage_sizes == (3, 4, 6, 3) and config.data.name == "cifar10"
      config_lib.validate(config)
      params = resnet50_abstract_params(config) if params is None else params
      recipe, _ = pgf.fit_sdgf_k(params, build_recipe(config, 39_063))
      matched = pgf.check_params(params, recipe)  # every rule matches, every M divides
      # 16 bottlenecks x 3 convs + 4 projections; stem and head dense.
      assert len(matched) == 52 and "stem_conv/kernel" not in matched
      assert recipe.rules[0].axis == axis
      assert recipe.rules[0].nm == ("2:8" if "2_8" in path else "1:8")
  # The demo config is the same row on digits.
  demo = config_lib.load(f"{path}:demo")
  config_lib.validate(demo)
  assert demo.data.name == "digits" and demo.sparsity.rules[0][1] == recipe.rules[0].nm


def test_bad_resnet_fields_are_named():
  config = config_lib.load(os.path.join(ROOT, "configs", "resnet50_1_8.py"))
  config.model.update(stem="vgg", width=0, stage_sizes=(3, 0), bn_momentum=1.5)
  config.data.name = "mnist"
  with pytest.raises(ValueError) as e:
    config_lib.validate(config)
  for field in ("config.model.stem='vgg'", "config.model.width=0", "config.model.stage_sizes",
                "config.model.bn_momentum=1.5", "config.data.name='mnist'"):
    assert field in str(e.value)
  with pytest.raises(ValueError, match="group='x'"):
    config_lib.load(os.path.join(ROOT, "configs", "resnet50_1_8.py") + ":group=x")


# ----------------------------------------------------------------------------- sharding, flops
def test_default_sharding_rules_place_conv_kernels():
  from jax.sharding import AbstractMesh, AxisType, PartitionSpec
  from pgf.train import sharding
  mesh = AbstractMesh((1, 2, 4), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  rules = sharding.parse_rules(sharding.DEFAULT_RULES)
  spec = lambda path, shape: sharding.leaf_spec(path, shape, rules, mesh)
  for path, shape in (("params/stage_1/block_0/conv_1/kernel", (3, 3, 128, 128)),
                      ("opt_state/1/0/mu/stage_3/block_2/conv_2/kernel", (1, 1, 512, 2048)),
                      ("params/stage_2/block_0/proj/kernel", (1, 1, 512, 1024))):
    # Input channels (the N:M axis) over fsdp, output channels over model.
    assert spec(path, shape) == PartitionSpec(None, None, "fsdp", "model")
  # The stem's 3 input channels cannot split: it, BatchNorm and its statistics fall to FSDP.
  assert spec("params/stem_conv/kernel", (3, 3, 3, 64)) == PartitionSpec(None, None, None, "fsdp")
  assert spec("model_state/batch_stats/stage_0/block_0/bn_1/mean", (64,)) == PartitionSpec("fsdp")


def test_conv_flops_scale_with_density():
  from pgf.analysis import flops
  mm = flops.resnet_matmuls()  # ResNet-50, 224 px
  dense = flops.inference_flops(mm, groups=flops.ALL_GROUPS)
  # 4.09 G multiply-accumulates, the usual count for ResNet-50 (convs 4.087 G + fc 2 M).
  assert dense["conv"] / 2 == pytest.approx(4.0871e9, rel=1e-4)
  assert dense["head"] == 2 * 2048 * 1000
  stem = 2 * 112 * 112 * 7 * 7 * 3 * 64
  for nm, axis in (("1:8", 2), ("2:8", (0, 1, 2))):
    sparse = flops.inference_flops(mm, ((CONV_RULE, nm, axis),))
    density = int(nm[0]) / 8
    assert sparse["conv"] == pytest.approx(stem + (dense["conv"] - stem) * density)
  # A rule's axis decides what M must divide: 3x3x3 stem channels group over (0, 1, 2) only.
  with pytest.raises(ValueError, match="stem_conv/kernel.*grouped length 3 "):
    flops.inference_flops(mm, ((r".*conv.*/kernel", "1:8", 2),))
  cifar = flops.matmuls_from_config(config_lib.load(RESNET_CONFIGS[0]))
  assert cifar[0].rows == 32 * 32 and cifar[0].shape == (3, 3, 3, 64)


BN_DEVICES_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from pgf.train import config_lib
from pgf.train.tasks import build_task
config = config_lib.load(os.path.join(sys.argv[1], "configs", "resnet50_1_8.py:demo"))
config.model.update(stage_sizes=(1, 1), width=8)
config.update(batch_size=32)
task = build_task(config, 0, 1)
rng = jax.random.key(0)
params, model_state = task.init_fn(rng), task.init_model_state(rng)
batch = task.train_source.train_batch(0)
step = lambda p, b, s: task.loss_fn(p, b, jax.random.key(1), True, model_state=s)[1][1]

def statistics(devices, rows=slice(None)):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("data",))
  b = jax.device_put({k: v[rows] for k, v in batch.items()}, NamedSharding(mesh, P("data")))
  out = jax.jit(step, out_shardings=NamedSharding(mesh, P()))(params, b, model_state)
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(out)]

def rel(a, b):
  return max(float(np.max(np.abs(x - y)) / np.max(np.abs(y))) for x, y in zip(a, b))

one, four, eight = statistics(1), statistics(4), statistics(8)
# What statistics computed per device would give: each device's 4 rows alone, averaged.
per_device = [np.mean(x, 0) for x in zip(*[statistics(1, slice(4 * d, 4 * d + 4))
                                            for d in range(8)])]
print(json.dumps({"4": rel(four, one), "8": rel(eight, one), "per_device": rel(per_device, one)}))
"""


def test_batchnorm_statistics_are_over_the_global_batch_on_any_device_count(tmp_path):
  """Issue 30 #8: the ResNet demo's 1x4 and 1x8 runs drift apart. Not per-device statistics:
  one train step's running BatchNorm statistics on 4 or 8 devices equal one device's to float32
  rounding (the jitted model sees the global batch; XLA all-reduces the moments), 10^4 times
  closer than statistics computed per device would be. The drift is that rounding (the order
  of the all-reduce) amplified over training steps."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="8")
  out = subprocess.run([sys.executable, "-c", BN_DEVICES_SCRIPT, ROOT], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=True)
  rel = json.loads(out.stdout.strip().splitlines()[-1])
  print(rel)
  assert rel["4"] < 1e-5 and rel["8"] < 1e-5, rel
  assert rel["per_device"] > 1e-3, rel  # per-device statistics would show
