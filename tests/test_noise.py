"""Gradient-noise statistics: hand-checked values, Adam-state lookup, use inside a jitted step."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pgf
from pgf.analysis import noise
from pgf.train.checkpointing import Checkpointer


def test_masked_mean_var_by_hand():
  mean, var, count = noise.masked_mean_var(
      [jnp.array([1.0, 2.0, 3.0]), jnp.array([[4.0], [10.0]])],
      [jnp.array([True, False, True]), jnp.array([[True], [False]])])
  # Pooled {1, 3, 4}: mean 8/3, variance ((5/3)^2 + (1/3)^2 + (4/3)^2) / 3 = 14/9.
  assert (float(mean), float(var), float(count)) == pytest.approx((8 / 3, 14 / 9, 3))
  mean, var, count = noise.masked_mean_var([jnp.ones(3)], [jnp.zeros(3, bool)])
  assert math.isnan(float(mean)) and math.isnan(float(var)) and float(count) == 0


def test_gradient_noise_by_hand():
  # One 2:4 kernel (4, 1): kept where |w| is largest, rows 1 and 3.
  masks = {"fc/kernel": jnp.array([[False], [True], [False], [True]])}
  grads = {"fc": {"kernel": jnp.array([[-1.0], [2.0], [3.0], [-4.0]])}}
  nu = {"fc": {"kernel": jnp.array([[1e-8], [3e-8], [5e-8], [7e-8]])}}
  stats = noise.as_floats(noise.gradient_noise(grads, nu, masks))
  assert stats["grad_abs_mean_kept"] == pytest.approx(3.0)  # |2|, |-4|
  assert stats["grad_abs_var_kept"] == pytest.approx(1.0)
  assert stats["grad_abs_mean_pruned"] == pytest.approx(2.0)  # |-1|, |3|
  assert stats["grad_abs_var_pruned"] == pytest.approx(1.0)
  assert stats["grad_abs_var_all"] == pytest.approx(1.25)  # {1, 2, 3, 4}
  assert stats["nu_mean_kept"] == pytest.approx(5e-8)
  assert stats["nu_var_kept"] == pytest.approx(4e-16, rel=1e-4)
  assert stats["nu_var_pruned"] == pytest.approx(4e-16, rel=1e-4)
  assert stats["nu_var_all"] == pytest.approx(5e-16, rel=1e-4)
  assert stats["kept_fraction"] == 0.5


def test_mask_flip_fraction_by_hand():
  before = {"a": jnp.array([True, False, False, True]), "b": jnp.array([[True, False]])}
  after = {"a": jnp.array([False, True, False, True]), "b": jnp.array([[True, False]])}
  assert float(noise.mask_flip_fraction(before, after)) == pytest.approx(2 / 6)
  assert float(noise.mask_flip_fraction(before, before)) == 0.0
  with pytest.raises(ValueError, match="differ in leaves"):
    noise.mask_flip_fraction(before, {"a": after["a"]})


def _adamw_chain(recipe):
  decay_mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
  return optax.chain(pgf.gradient_flow(recipe), optax.clip_by_global_norm(1.0),
                     optax.adamw(1e-2, mask=decay_mask))


def test_finds_the_adam_state_in_nested_and_restored_states():
  params = {"w": jnp.ones((4, 2))}
  state = _adamw_chain(pgf.Recipe("dense")).init(params)
  assert noise.adam_nu(state)["w"].shape == (4, 2)
  injected = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3).init(params)
  assert noise.adam_nu(injected)["w"].shape == (4, 2)
  restored = [{"count": 0}, [{"count": 0, "mu": params, "nu": params}, None]]  # orbax, no target
  assert noise.adam_nu(restored) is params
  with pytest.raises(ValueError, match="found 0"):
    noise.adam_nu(optax.sgd(0.1).init(params))
  with pytest.raises(ValueError, match="found 2"):
    noise.adam_nu(optax.chain(optax.adam(1e-3), optax.adam(1e-3)).init(params))


def _setup(method, **kw):
  rng = np.random.default_rng(0)
  params = {"mlp": {"fc1": {"kernel": jnp.asarray(rng.standard_normal((16, 8)), jnp.float32),
                            "bias": jnp.zeros(8)}}}
  recipe = pgf.Recipe(method=method, rules=((r"mlp/fc1/kernel", "1:4"),), total_steps=20, **kw)
  return params, recipe, _adamw_chain(recipe)


@pytest.mark.parametrize("method,kw", [("sr_ste", {}), ("mdgf_exp", {}), ("dense", {}),
                                       ("sdgf_stepwise", {"mask_update_every": 3})])
def test_noise_stats_inside_a_jitted_step(method, kw):
  params, recipe, tx = _setup(method, **kw)
  opt_state = tx.init(params)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((32, 16)), jnp.float32)

  @jax.jit
  def step_fn(params, opt_state, prev_masks, step):
    loss = lambda p: jnp.mean(  # noqa: E731
        jnp.square(x @ pgf.sparsify(p, recipe, pgf.at_step(opt_state, step))["mlp"]["fc1"][
            "kernel"]))
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    # The way train.py measures every k steps: both branches return the same structure.
    def measure():
      return noise.noise_stats(params, grads, opt_state, recipe, step, prev_masks)

    def skip():
      return jax.tree.map(jnp.zeros_like, jax.eval_shape(measure)[0]), prev_masks

    stats, masks = jax.lax.cond(step % 2 == 0, measure, skip)
    return optax.apply_updates(params, updates), opt_state, masks, stats

  masks = pgf.current_masks(params, recipe, 0)
  for step in range(6):
    params, opt_state, masks, stats = step_fn(params, opt_state, masks, jnp.int32(step))
    stats = noise.as_floats(stats)
    assert set(stats) == set(noise.STAT_KEYS)
    if step % 2:
      assert all(v == 0.0 for v in stats.values())
      continue
    assert stats["kept_fraction"] == pytest.approx(0.25 if method != "sdgf_stepwise" else 0.75)
    assert stats["nu_var_all"] > 0 and stats["grad_abs_var_kept"] > 0
    assert 0.0 <= stats["mask_flip_fraction"] <= 0.5


def test_noise_stats_without_previous_masks_has_nan_flips():
  params, recipe, tx = _setup("sr_ste")
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  stats, masks = noise.noise_stats(params, grads, opt_state, recipe, 0)
  assert math.isnan(float(stats["mask_flip_fraction"]))
  assert set(masks) == {"mlp/fc1/kernel"} and int(masks["mlp/fc1/kernel"].sum()) == 32
  # Adam's nu is still zero before the first update: no spread at all.
  assert float(stats["nu_var_all"]) == 0.0


@pytest.mark.parametrize("mask_update_every", [1, 4])
def test_checkpoint_noise_stats(tmp_path, mask_update_every):
  params, recipe, tx = _setup("sr_ste", mask_update_every=mask_update_every)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = tx.update(grads, opt_state, params)
  masks = pgf.current_masks(params, recipe, 0)
  flipped = {"mlp/fc1/kernel": jnp.roll(masks["mlp/fc1/kernel"], 1, axis=0)}
  checkpointer = Checkpointer(str(tmp_path), async_save=False)
  checkpointer.save(1, {"step": jnp.int32(1), "params": params, "opt_state": opt_state,
                        "noise_masks": flipped})
  checkpointer.close()
  (tmp_path / "recipe.json").write_text(json.dumps(recipe.to_dict()))
  stats = noise.checkpoint_noise_stats(str(tmp_path))
  assert stats["step"] == 1 and stats["kept_fraction"] == 0.25
  # One update with all-ones gradients clipped to global norm 1 over 136 entries:
  # nu = (1 - b2) / 136 everywhere, so there is no spread.
  assert stats["nu_mean_kept"] == pytest.approx(1e-3 / 136, rel=1e-4)
  assert stats["nu_mean_pruned"] == pytest.approx(1e-3 / 136, rel=1e-4)
  assert stats["nu_var_all"] == pytest.approx(0.0, abs=1e-20)
  assert 0 < stats["mask_flip_fraction"] <= 0.5
  assert "grad_abs_var_all" not in stats
