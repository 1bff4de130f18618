"""Meshes, shardings and sharded N:M masks; 8-device training in a subprocess.

The one-device runs happen here (the main suite has one CPU device); the 8-device half runs in
`tests/sharding_child.py` with XLA_FLAGS=--xla_force_host_platform_device_count=8 in its own
environment. The ViT and T5 tiny configs must train to the same losses on data=8 and on
fsdp=4 x model=2 (Auto and, for ViT, Explicit axes) as on one device, masks computed on a
mesh must equal the one-device masks bit for bit, and checkpoints must restore across meshes
(1 device -> 8 in the child, 8 -> 1 here).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

import sharding_child as child
from pgf.train import config_lib
from pgf.train import sharding
from pgf.train.checkpointing import Checkpointer
from pgf.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_RTOL = 1e-5  # float32: only the reduction order differs between meshes


# ----------------------------------------------------------------------------- pure functions
def abstract_mesh(data=1, fsdp=4, model=2):
  return AbstractMesh((data, fsdp, model), sharding.MESH_AXES,
                      axis_types=(AxisType.Auto,) * 3)


def spec(path, shape, rules=sharding.DEFAULT_RULES, **mesh):
  return sharding.leaf_spec(path, shape, sharding.parse_rules(rules), abstract_mesh(**mesh))


def test_default_rules_place_vit_and_t5_kernels():
  block = "params/encoder/encoderblock_0"
  assert spec(f"{block}/mlp/fc1/kernel", (384, 1536)) == PartitionSpec("fsdp", "model")
  assert spec(f"{block}/mlp/fc2/kernel", (1536, 384)) == PartitionSpec("model", "fsdp")
  assert spec(f"{block}/attn/query/kernel", (384, 6, 64)) == PartitionSpec("fsdp", "model", None)
  assert spec(f"{block}/attn/out/kernel", (6, 64, 384)) == PartitionSpec("model", None, "fsdp")
  # Adam's moments follow their parameter: rules search the whole state path.
  assert spec(f"opt_state/2/0/mu/{block[7:]}/mlp/fc1/kernel", (384, 1536)) == PartitionSpec(
      "fsdp", "model")
  t5 = "params/decoder/layers_1"
  assert spec(f"{t5}/encoder_decoder_attention/key/kernel", (512, 512)) == PartitionSpec(
      "fsdp", "model")
  assert spec(f"{t5}/mlp/wo/kernel", (1024, 512)) == PartitionSpec("model", "fsdp")
  # Everything else: FSDP on the largest divisible dimension, scalars replicated.
  assert spec("params/pos_embedding", (1, 196, 384)) == PartitionSpec(None, None, "fsdp")
  assert spec("params/head/bias", (10,), fsdp=4) == PartitionSpec()
  assert spec("opt_state/0/count", ()) == PartitionSpec()
  # On a pure data-parallel mesh every axis named by the rules has size 1.
  assert spec(f"{block}/mlp/fc1/kernel", (384, 1536), data=8, fsdp=1, model=1) == PartitionSpec(
      "fsdp", "model")


def test_spec_forms():
  rules = ((r"a$", "replicated"), (r"b$", "fsdp:data+fsdp"), (r"c$", "data+fsdp,_"),
           (r"d$", (None, "model")))
  assert spec("x/a", (8, 8), rules) == PartitionSpec()
  assert spec("x/b", (6, 8), rules, data=2) == PartitionSpec(None, ("data", "fsdp"))
  assert spec("x/c", (8, 3), rules, data=2) == PartitionSpec(("data", "fsdp"), None)
  assert spec("x/d", (3, 4), rules) == PartitionSpec(None, "model")
  assert spec("x/other", (8, 8), rules) == PartitionSpec()  # no rule matches


@pytest.mark.parametrize("rules,fragments", [
    (((r"x", "fsdp,tensor"),), ["config.sharding_rules[0]", "tensor", "not mesh axes"]),
    (((r"(", "fsdp"),), ["config.sharding_rules[0]", "does not compile"]),
    (((r"x", 3),), ["config.sharding_rules[0]", "must be"]),
    ((("x",),), ["config.sharding_rules[0]", "(regex, spec) pair"]),
])
def test_bad_rules_name_the_field(rules, fragments):
  with pytest.raises(ValueError) as e:
    sharding.parse_rules(rules)
  for fragment in fragments:
    assert fragment in str(e.value)


def test_rule_that_cannot_split_names_rule_leaf_and_mesh():
  with pytest.raises(ValueError, match=r"config.sharding_rules\[0\].*attn/query/kernel.*3 is "
                                       r"not divisible by 2"):
    spec("params/b/attn/query/kernel", (192, 3, 64), ((r"query/kernel$", "fsdp,model,_"),))
  with pytest.raises(ValueError, match=r"config.sharding_rules\[0\].*2 entries.*\(4, 4, 4\)"):
    spec("params/k", (4, 4, 4), ((r"k$", "fsdp,model"),))


@pytest.mark.parametrize("mesh,devices,fragment", [
    (dict(data=3), 8, "uses 3 devices but 8 are present"),
    (dict(data=-1, fsdp=3), 8, "do not divide by 3"),
    (dict(data=-1, fsdp=-1), 8, "at most one axis may be -1"),
    (dict(data=0), 8, "config.mesh.data=0"),
    (dict(tensor=2), 8, "config.mesh.tensor: unknown field"),
    (dict(axis_types="manual"), 8, "config.mesh.axis_types='manual'"),
])
def test_bad_mesh_names_the_field(mesh, devices, fragment):
  with pytest.raises(ValueError, match="Invalid config") as e:
    sharding.mesh_sizes(mesh, devices)
  assert fragment in str(e.value)


def test_mesh_sizes_and_batch_split_in_validate():
  assert sharding.mesh_sizes(dict(data=-1, fsdp=2, model=2), 16) == dict(data=4, fsdp=2, model=2)
  assert sharding.mesh_sizes(dict(fsdp=-1), 8) == dict(data=1, fsdp=8, model=1)
  assert sharding.mesh_sizes(None, 8) == dict(data=8, fsdp=1, model=1)
  config = child.build_config("vit", dict(data=-1, fsdp=2, model=2))
  config.batch_size = 6  # 8 devices: data x fsdp = 4 shards of the batch
  problems = config_lib.validate(config, device_count=8, raise_errors=False)
  assert any("config.batch_size=6 is not divisible by the 4 data-parallel devices" in p
             for p in problems), problems
  config.batch_size = 4  # model=2 sees the whole batch: 4 rows suffice on 8 devices
  assert not config_lib.validate(config, device_count=8, raise_errors=False)


def test_pad_rows_marks_padding_invalid():
  batch = {"image": np.ones((5, 2), np.float32), "valid": np.ones(5, bool)}
  padded = sharding.pad_rows(batch, 4)
  assert padded["image"].shape == (8, 2) and padded["valid"].tolist() == [True] * 5 + [False] * 3
  assert sharding.pad_rows(batch, 5) is batch
  with pytest.raises(ValueError, match="no 'valid' key"):
    sharding.pad_rows({"x": np.ones(3)}, 2)


# ----------------------------------------------------------------------------- 8 devices
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One-device runs here, then the 8-device child; returns (base dir, child results)."""
  base = str(tmp_path_factory.mktemp("sharding"))
  single = {}
  for model in child.models():
    workdir = os.path.join(base, f"1dev_{model}")
    config = child.build_config(model)
    summary = train_and_evaluate(config, workdir)
    state = summary.pop("state")
    child.save_arrays(os.path.join(workdir, "params.npz"), state["params"])
    child.save_arrays(os.path.join(workdir, "masks.npz"), jax.jit(child.masks_fn(config))(
        state["params"], np.int32(child.STEPS - 1)))
    single[model] = {"losses": child.train_losses(workdir), "summary": summary, "state": state}
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                       "--xla_force_host_platform_device_count=8".strip())
  result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharding_child.py"), base],
                          capture_output=True, text=True, timeout=900, env=env)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
  with open(os.path.join(base, "child.json")) as f:
    return base, single, json.load(f)


def test_masks_on_sharded_contracting_axes_match_one_device(runs):
  _, _, out = runs
  assert out["device_count"] == 8
  assert out["mask_failures"] == []


def runs_of(out):
  return [(model, name) for model in out["models"] for name in child.MESHES_OF[model]]


def test_losses_match_one_device(runs):
  _, single, out = runs
  assert out["models"] == list(child.models())
  for model, name in runs_of(out):
    want = single[model]["losses"]
    got = out[f"{model}/{name}"]["losses"]
    assert len(got) == child.STEPS and want[-1] != want[0]
    np.testing.assert_allclose(got, want, rtol=LOSS_RTOL, err_msg=f"{model} on {name}")
    for key, value in out[f"{model}/{name}"]["eval"].items():
      np.testing.assert_allclose(value, single[model]["summary"][key], rtol=LOSS_RTOL,
                                 err_msg=f"{model} on {name}: {key}")


def test_state_is_really_sharded(runs):
  _, _, out = runs
  specs = out["vit/fsdp4_model2"]["specs"]
  assert specs["encoder/encoderblock_0/mlp/fc1/kernel"] == ["fsdp", "model"]
  assert specs["encoder/encoderblock_0/attn/out/kernel"] == ["model", None, "fsdp"]
  if "t5" in out["models"]:
    assert out["t5/fsdp4_model2"]["specs"]["encoder/layers_0/mlp/wo/kernel"] == ["model", "fsdp"]


def test_one_device_checkpoint_restores_on_8_with_identical_masks(runs):
  base, _, out = runs
  for model, name in runs_of(out):
    result = out[f"{model}/{name}"]
    assert result["restored_step"] == child.STEPS
    assert result["restored_shardings_match"] and result["restored_equal"], (model, name)
    want = child.load_arrays(os.path.join(base, f"1dev_{model}", "masks.npz"))
    got = child.load_arrays(os.path.join(base, f"8dev_{model}_{name}", "restored_masks.npz"))
    assert sorted(got) == sorted(want) and want
    for path in want:
      np.testing.assert_array_equal(got[path], want[path], err_msg=f"{model} {name} {path}")


def test_8_device_checkpoint_restores_on_one_device(runs):
  base, single, out = runs
  for model, name in runs_of(out):
    state = single[model]["state"]
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
    checkpointer = Checkpointer(os.path.join(base, f"8dev_{model}_{name}"))
    restored, step = checkpointer.restore_latest(target)
    checkpointer.close()
    assert step == child.STEPS
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(restored))
    want = child.load_arrays(os.path.join(base, f"8dev_{model}_{name}", "params.npz"))
    got = child.flat(restored["params"])
    for path in want:
      np.testing.assert_array_equal(got[path], want[path], err_msg=f"{model} {name} {path}")
