"""ResNet with N:M conv kernels: masks on HWIO kernels, the model, BatchNorm state through the
train loop, the Table 6 configs against ResNet-50's abstract params, sharding and FLOPs."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pgf
from pgf import deploy
from pgf.analysis import export
from pgf.models.resnet import ResNet

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
