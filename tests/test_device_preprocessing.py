"""The on-device half of the image recipe: normalisation, mixup/cutmix, BCE, bf16 compute, and
the synthetic source that measures the step without a dataset."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pgf
from pgf.train import config_lib
from pgf.data import mixup
from pgf.data.synthetic import SyntheticImageSource
from pgf.train.tasks import build_task
from pgf.train import build_recipe, train_and_evaluate
from test_train_vit import ROOT, load_config, tiny_vit

SPEC = mixup.MixSpec(mixup_alpha=0.5)


def images_and_targets(batch=8, classes=5):
  x = jax.random.uniform(jax.random.key(0), (batch, 6, 6, 3))
  labels = jnp.arange(batch) % classes
  return x, mixup.soft_targets(labels, classes, 0.1)


def test_normalize_and_soft_targets():
  pixels = np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3) * 10
  out = mixup.normalize(jnp.asarray(pixels), (10.0, 20.0, 30.0), (2.0, 4.0, 8.0))
  expected = (pixels.astype(np.float32) - [10.0, 20.0, 30.0]) / [2.0, 4.0, 8.0]
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  targets = mixup.soft_targets(jnp.array([0, 3]), 4, 0.2)
  np.testing.assert_allclose(targets, [[0.85, 0.05, 0.05, 0.05], [0.05, 0.05, 0.05, 0.85]],
                             rtol=1e-6)


def test_mixup_mixes_images_and_targets_with_the_same_lambda():
  x, t = images_and_targets()
  out, targets, lam = mixup.mix_batch(jax.random.key(3), x, t, SPEC)
  assert 0.0 < float(lam) < 1.0
  np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(targets, lam * t + (1 - lam) * t[::-1], rtol=1e-5)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-5)
  again = mixup.mix_batch(jax.random.key(3), x, t, SPEC)
  np.testing.assert_array_equal(out, again[0])  # a function of the key (seed, step)
  other = mixup.mix_batch(jax.random.key(4), x, t, SPEC)
  assert float(other[2]) != float(lam)


def test_mixup_partners_come_from_the_same_shard():
  x, t = images_and_targets()  # 8 examples
  want = np.concatenate([np.asarray(x)[3::-1], np.asarray(x)[:3:-1]])  # 2 blocks, each reversed
  np.testing.assert_array_equal(mixup.partners(x, 2), want)
  np.testing.assert_array_equal(mixup.partners(x, 3), np.asarray(x)[::-1])  # 8 % 3: whole
  out, targets, lam = mixup.mix_batch(jax.random.key(3), x, t, SPEC, shards=2)
  np.testing.assert_allclose(out, lam * x + (1 - lam) * want, rtol=1e-5, atol=1e-6)
  with mixup.partner_shards(2):  # the trainer's route: the batch's shard count as context
    np.testing.assert_array_equal(mixup.mix_batch(jax.random.key(3), x, t, SPEC)[0], out)
  t_want = np.concatenate([np.asarray(t)[3::-1], np.asarray(t)[:3:-1]])
  np.testing.assert_allclose(targets, lam * t + (1 - lam) * t_want, rtol=1e-5)
  with pytest.raises(ValueError, match="shards=0"):
    with mixup.partner_shards(0):
      pass


def test_cutmix_pastes_a_box_and_lambda_is_the_kept_area():
  x, t = images_and_targets()
  spec = mixup.MixSpec(cutmix_alpha=1.0)
  for seed in range(5):
    out, targets, lam = mixup.mix_batch(jax.random.key(seed), x, t, spec)
    from_self = np.all(np.asarray(out) == np.asarray(x), axis=-1)
    from_other = np.all(np.asarray(out) == np.asarray(x[::-1]), axis=-1)
    assert np.all(from_self | from_other)
    pasted = ~from_self[0]
    assert float(lam) == pytest.approx(1 - pasted.mean(), abs=1e-6)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-5)


def test_switch_and_probability():
  x, t = images_and_targets()
  never = mixup.MixSpec(mixup_alpha=0.5, prob=0.0)
  assert not never.enabled
  out, targets, lam = mixup.mix_batch(jax.random.key(0), x, t, never)
  assert out is x and targets is t and float(lam) == 1.0
  both = mixup.MixSpec(mixup_alpha=0.5, cutmix_alpha=1.0, switch_prob=0.5)
  kinds = set()
  for seed in range(12):
    out, _, lam = mixup.mix_batch(jax.random.key(seed), x, t, both)
    cut = np.all((np.asarray(out) == np.asarray(x)) | (np.asarray(out) == np.asarray(x[::-1])))
    kinds.add("cutmix" if cut else "mixup")
  assert kinds == {"cutmix", "mixup"}
  assert mixup.MixSpec(mixup_alpha=-1, prob=2).problems() == [
      "config.mixup.mixup_alpha=-1: must be >= 0", "config.mixup.prob=2: must be in [0, 1]"]


def test_paper_configs_carry_the_authors_recipe_and_bad_fields_are_named():
  config = load_config(os.path.join(ROOT, "configs", "vit_1_16.py"))
  assert config.loss == "sigmoid_bce" and config.label_smoothing == 0.0
  assert config.mixup.mixup_alpha == 0.5 and config.mixup.cutmix_alpha == 0.0
  assert config.model.dtype == "bfloat16" and config.model.dropout == 0.1
  assert config.model.drop_path == 0.1 and config.optim.grad_clip == 1.0
  assert config.data.randaugment == "rand-m15-n2-p1-mstd0"
  demo = load_config(os.path.join(ROOT, "configs", "vit_1_16.py"), "demo")
  assert demo.model.dtype == "float32" and not demo.data.randaugment
  with config.unlocked():
    config.loss = "hinge"
    config.model.dtype = "int8"
    config.mixup.switch_prob = 1.5
  problems = config_lib.validate(config, raise_errors=False)
  assert any("config.loss='hinge'" in p for p in problems)
  assert any("config.model.dtype='int8'" in p for p in problems)
  assert any("config.mixup.switch_prob=1.5" in p for p in problems)


def tiny_demo(**overrides):
  config = tiny_vit(load_config(os.path.join(ROOT, "configs", "vit_1_16.py"), "demo"), patch=4)
  config.update(total_steps=4, log_every=2, eval_every=0, checkpoint_every=100,
                eval_batch_size=300, batch_size=32)
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for name in parents:
      target = target[name]
    target[leaf] = value
  return config


def test_bf16_compute_matches_float32_and_deploys_exact_nm():
  f32 = build_task(tiny_demo())
  bf16 = build_task(tiny_demo(**{"model.dtype": "bfloat16"}))
  params = f32.init_fn(jax.random.key(0))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  recipe = build_recipe(tiny_demo(), 4)
  batch = f32.train_source.train_batch(0)
  grads = {}
  at_2 = pgf.at_step(pgf.gradient_flow(recipe).init(params), 2)  # the forward of step 2
  for name, task in (("f32", f32), ("bf16", bf16)):
    loss_fn = lambda p, t=task: t.loss_fn(pgf.sparsify(p, recipe, at_2), batch,
                                          jax.random.key(1), True)[0]
    loss, grads[name] = jax.jit(jax.value_and_grad(loss_fn))(params)
    if name == "f32":
      reference = float(loss)
    else:
      assert float(loss) == pytest.approx(reference, rel=2e-2)
  flat32, flat16 = jax.tree.leaves(grads["f32"]), jax.tree.leaves(grads["bf16"])
  cosine = sum(float(jnp.vdot(a, b)) for a, b in zip(flat32, flat16)) / np.sqrt(
      sum(float(jnp.vdot(a, a)) for a in flat32) * sum(float(jnp.vdot(b, b)) for b in flat16))
  assert cosine > 0.99
  assert all(g.dtype == jnp.float32 for g in flat16)  # float32 params get float32 gradients
  deployed = pgf.finalize(params, recipe)
  for kernel in (deployed["encoder"]["encoderblock_0"]["mlp"]["fc1"]["kernel"],
                 deployed["encoder"]["encoderblock_0"]["mlp"]["fc2"]["kernel"]):
    assert bool(pgf.is_nm(kernel != 0, 1, 16, 0))


def test_bce_mixup_bf16_run_and_the_synthetic_source(tmp_path):
  source = SyntheticImageSource(8, seed=0, image_size=32)
  batch = source.train_batch(3)
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (8, 32, 32, 3)
  np.testing.assert_array_equal(batch["image"],
                                SyntheticImageSource(8, seed=0, image_size=32).train_batch(3)[
                                    "image"])
  assert not np.array_equal(batch["label"], source.train_batch(4)["label"])
  config = tiny_demo(**{"data.name": "synthetic_imagenet", "data.image_size": 32,
                        "loss": "sigmoid_bce", "mixup.mixup_alpha": 0.5,
                        "model.dtype": "bfloat16", "eval_batch_size": 500})
  summary = train_and_evaluate(config, str(tmp_path))
  assert summary["final_step"] == 4 and np.isfinite(summary["current_loss"])
