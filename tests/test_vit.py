"""Tests for pgf.models.vit: published sizes, the stable parameter layout, train/eval behaviour."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgf.models.vit import VARIANTS, DropPath, ViT, decode_variant, param_count

# Published parameter counts at 224 px, 1000 classes (timm / original release, which add one more
# position embedding for the class token than big_vision's layout; both are within 0.01%).
PUBLISHED = {"Ti/16": 5_717_416, "S/16": 22_050_664, "B/16": 86_567_656, "L/16": 304_326_632}


def _shapes(model, image_shape):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(image_shape), train=False))
  return variables["params"]


def _flat(params):
  return {"/".join(k.key for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _tiny(**overrides):
  kwargs = dict(num_classes=10, width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=4)
  kwargs.update(overrides)
  return ViT(**kwargs)


_IMAGES = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _tiny_variables(pool_type="tok", head_zero_init=False):
  """Rates are not parameters, so one (jitted: eager init compiles op by op) init serves all."""
  model = _tiny(pool_type=pool_type, head_zero_init=head_zero_init)
  return jax.jit(model.init, static_argnames="train")(jax.random.key(0), _IMAGES, train=False)


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_param_count_matches_published(variant):
  params = _shapes(ViT(num_classes=1000, **decode_variant(variant)), (1, 224, 224, 3))
  count = param_count(params)
  assert abs(count - PUBLISHED[variant]) / PUBLISHED[variant] < 0.005, count


def test_decode_variant():
  assert decode_variant("B/16") == dict(width=768, depth=12, mlp_dim=3072, num_heads=12,
                                        patch_size=16)
  assert decode_variant("Ti/4")["patch_size"] == 4
  assert decode_variant("L/14") == {**VARIANTS["L"], "patch_size": 14}
  assert decode_variant("S") == VARIANTS["S"]
  for bad in ("X/16", "B/", "B/x", "", "b/16"):
    with pytest.raises(ValueError):
      decode_variant(bad)


def test_param_names_and_shapes():
  width, heads, mlp, classes, p = 192, 3, 768, 1000, 16
  flat = _flat(_shapes(ViT(num_classes=classes, **decode_variant("Ti/16")), (1, 224, 224, 3)))
  head_dim = width // heads
  expected = {
      "embedding/kernel": (p, p, 3, width), "embedding/bias": (width,),
      "cls": (1, 1, width), "pos_embedding": (1, 196, width),
      "encoder/encoder_norm/scale": (width,), "encoder/encoder_norm/bias": (width,),
      "head/kernel": (width, classes), "head/bias": (classes,),
  }
  for i in range(12):
    block = f"encoder/encoderblock_{i}"
    for ln in ("ln1", "ln2"):
      expected[f"{block}/{ln}/scale"] = expected[f"{block}/{ln}/bias"] = (width,)
    for name in ("query", "key", "value"):
      expected[f"{block}/attn/{name}/kernel"] = (width, heads, head_dim)
      expected[f"{block}/attn/{name}/bias"] = (heads, head_dim)
    expected[f"{block}/attn/out/kernel"] = (heads, head_dim, width)
    expected[f"{block}/attn/out/bias"] = (width,)
    expected[f"{block}/mlp/fc1/kernel"] = (width, mlp)
    expected[f"{block}/mlp/fc1/bias"] = (mlp,)
    expected[f"{block}/mlp/fc2/kernel"] = (mlp, width)
    expected[f"{block}/mlp/fc2/bias"] = (width,)
  assert flat == expected

  # The sparsity rules the configs use select exactly the intended leaves.
  ff = [k for k in flat if re.fullmatch(r"encoder/encoderblock_\d+/mlp/fc[12]/kernel", k)]
  qk = [k for k in flat if re.fullmatch(r".*/attn/(query|key)/kernel", k)]
  assert len(ff) == 24 and len(qk) == 24


def test_patch_size_must_divide_image():
  with pytest.raises(ValueError, match="divisible"):
    jax.eval_shape(lambda: _tiny(patch_size=5).init(jax.random.key(0), _IMAGES, train=False))


def test_gap_has_no_class_token():
  flat = _flat(_shapes(_tiny(pool_type="gap"), (1, 16, 16, 3)))
  assert "cls" not in flat and flat["pos_embedding"] == (1, 16, 32)


@pytest.mark.parametrize("pool_type", ["tok", "gap"])
def test_tiny_forward_train_and_eval(pool_type):
  model = _tiny(pool_type=pool_type, dropout=0.1, attention_dropout=0.1, drop_path=0.2)
  variables = _tiny_variables(pool_type)
  apply = jax.jit(model.apply, static_argnames="train")  # One compile beats eager op dispatch.
  eval_a = apply(variables, _IMAGES, train=False)  # No "dropout" rng needed in eval.
  eval_b = apply(variables, _IMAGES, train=False)
  assert eval_a.shape == (4, 10) and eval_a.dtype == jnp.float32
  assert np.all(np.isfinite(eval_a))
  np.testing.assert_array_equal(eval_a, eval_b)

  train_a = apply(variables, _IMAGES, train=True, rngs={"dropout": jax.random.key(2)})
  train_b = apply(variables, _IMAGES, train=True, rngs={"dropout": jax.random.key(3)})
  train_a2 = apply(variables, _IMAGES, train=True, rngs={"dropout": jax.random.key(2)})
  assert np.all(np.isfinite(train_a)) and np.all(np.isfinite(train_b))
  assert not np.allclose(train_a, train_b)  # Stochastic in train mode ...
  np.testing.assert_array_equal(train_a, train_a2)  # ... but a function of the rng.
  assert not np.allclose(train_a, eval_a)


def test_train_without_rates_needs_no_rng_and_equals_eval():
  model, variables = _tiny(), _tiny_variables()
  apply = jax.jit(model.apply, static_argnames="train")
  np.testing.assert_allclose(apply(variables, _IMAGES, train=True),
                             apply(variables, _IMAGES, train=False), rtol=1e-6)


def test_head_zero_init_gives_zero_logits():
  model = _tiny()  # head_zero_init defaults to True.
  logits = jax.jit(model.apply, static_argnames="train")(
      _tiny_variables(head_zero_init=True), _IMAGES, train=False)
  np.testing.assert_array_equal(logits, 0.0)


def test_bfloat16_compute_keeps_float32_params():
  model = _tiny(dtype=jnp.bfloat16)
  variables = _tiny_variables()  # dtype does not change the parameters either.
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  logits = jax.jit(model.apply, static_argnames="train")(variables, _IMAGES, train=False)
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  float32_logits = jax.jit(_tiny().apply, static_argnames="train")(variables, _IMAGES,
                                                                  train=False)
  np.testing.assert_allclose(logits, float32_logits, atol=0.1)


def test_drop_path_rate_increases_linearly():
  model = _tiny(depth=3, drop_path=0.3)
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, DropPath) and context.method_name == "__call__":
      rates.append(context.module.rate)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), _IMAGES, train=False))
  # Two DropPath per block (attention and MLP branch): 0 at the first block, 0.3 at the last.
  np.testing.assert_allclose(rates, [0.0, 0.0, 0.15, 0.15, 0.3, 0.3])
