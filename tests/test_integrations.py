"""pgf inside the JAX programs users write: NNX's Optimizer, optax.MultiSteps, vmap over seeds,
the whole loop in lax.scan, nn.scan stacked kernels and bfloat16 params.

Each test compares with the plain run (same numbers) and checks the deployed model is exact N:M.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pgf

X = jax.random.normal(jax.random.key(0), (32, 16))
Y = jnp.argmax(X[:, :3], axis=-1)


def xent(logits, y=Y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def assert_tree_close(a, b, rtol=1e-5, atol=1e-6):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=rtol,
                               atol=atol, err_msg=jax.tree_util.keystr(path))


# ----------------------------------------------------------------------------- a plain model
def mlp_init(key):
  k1, k2 = jax.random.split(key)
  return {"fc1": {"kernel": jax.random.normal(k1, (16, 32)) * 0.3, "bias": jnp.zeros(32)},
          "fc2": {"kernel": jax.random.normal(k2, (32, 3)) * 0.3, "bias": jnp.zeros(3)}}


def mlp_apply(params, x):
  return jnp.tanh(x @ params["fc1"]["kernel"] + params["fc1"]["bias"]) @ params["fc2"][
      "kernel"] + params["fc2"]["bias"]


RECIPE = pgf.Recipe("sdgf_stepwise", rules=((r"fc1/kernel", "1:8"),), total_steps=12,
                    dense_fraction=0.25, finetune_fraction=0.25, mask_update_every=3)


def make_step(recipe, tx, x=X, y=Y):
  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(
        lambda p: xent(mlp_apply(pgf.sparsify(p, recipe, opt_state), x), y))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return train_step


def python_loop(recipe, tx, params, steps):
  train_step = jax.jit(make_step(recipe, tx))
  opt_state = tx.init(params)
  losses = []
  for _ in range(steps):
    params, opt_state, loss = train_step(params, opt_state)
    losses.append(float(loss))
  return params, opt_state, losses


def assert_deploys_exact_nm(params, recipe, opt_state, n=1, m=8):
  kernel = pgf.finalize(params, recipe, opt_state)["fc1"]["kernel"]
  assert bool(pgf.is_nm(kernel != 0, n, m, 0))


# ----------------------------------------------------------------------------- lax.scan
def test_whole_loop_in_lax_scan_equals_the_python_loop():
  tx = pgf.optimizer(RECIPE, optax.adam(1e-2))
  params = mlp_init(jax.random.key(1))
  ref_params, ref_state, ref_losses = python_loop(RECIPE, tx, params, 12)
  train_step = make_step(RECIPE, tx)

  @jax.jit
  def scanned(params):
    def body(carry, _):
      params, opt_state, loss = train_step(*carry)
      return (params, opt_state), loss
    return jax.lax.scan(body, (params, tx.init(params)), None, length=12)

  (out_params, out_state), losses = scanned(params)
  assert int(pgf.step_from_state(out_state)) == 12
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_tree_close(out_params, ref_params)
  np.testing.assert_array_equal(pgf.masks_from_state(out_state)["fc1/kernel"],
                                pgf.masks_from_state(ref_state)["fc1/kernel"])
  assert_deploys_exact_nm(out_params, RECIPE, out_state)


# ----------------------------------------------------------------------------- vmap over seeds
def test_vmap_over_seeds_equals_separate_runs():
  recipe = pgf.Recipe("mdgf_exp", rules=((r"fc1/kernel", "1:8"),), total_steps=10,
                      dense_fraction=0.1)
  tx = pgf.optimizer(recipe, optax.adam(1e-2))
  seeds = jax.random.split(jax.random.key(2), 3)
  batched = jax.vmap(mlp_init)(seeds)
  opt_state = jax.vmap(tx.init)(batched)
  train_step = jax.jit(jax.vmap(make_step(recipe, tx)))
  for _ in range(10):
    batched, opt_state, _ = train_step(batched, opt_state)
  np.testing.assert_array_equal(pgf.step_from_state(opt_state), [10, 10, 10])
  for i in range(3):
    single, single_state, _ = python_loop(recipe, tx, mlp_init(seeds[i]), 10)
    assert_tree_close(jax.tree.map(lambda a: a[i], batched), single)
    assert_deploys_exact_nm(jax.tree.map(lambda a: a[i], batched), recipe, single_state)


# ----------------------------------------------------------------------------- MultiSteps
def test_multisteps_with_step_from_state_equals_full_batch_updates():
  recipe = pgf.Recipe("mdgf_exp", rules=((r"fc1/kernel", "1:8"),), total_steps=6,
                      dense_fraction=0.2)  # total_steps counts real updates
  inner = pgf.optimizer(recipe, optax.sgd(0.3))
  params = mlp_init(jax.random.key(3))
  full, _, _ = python_loop(recipe, inner, params, 6)

  tx = optax.MultiSteps(inner, every_k_schedule=2)
  halves = [make_step(recipe, tx, X[:16], Y[:16]), make_step(recipe, tx, X[16:], Y[16:])]
  halves = [jax.jit(h) for h in halves]
  opt_state = tx.init(params)
  micro = params
  for i in range(12):
    micro, opt_state, _ = halves[i % 2](micro, opt_state)
  assert int(pgf.step_from_state(opt_state)) == 6
  assert_tree_close(micro, full, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- NNX
class NNXMLP(nnx.Module):

  def __init__(self, rngs):
    self.fc1 = nnx.Linear(16, 32, rngs=rngs)
    self.fc2 = nnx.Linear(32, 3, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jnp.tanh(self.fc1(x)))


@pytest.mark.parametrize("every", [1, 3], ids=["recomputed", "stored_masks"])
def test_nnx_optimizer_equals_the_functional_run(every):
  recipe = pgf.Recipe("sdgf_stepwise", rules=((r"fc1/kernel", "1:8"),), total_steps=12,
                      dense_fraction=0.25, finetune_fraction=0.25, mask_update_every=every)
  tx = pgf.optimizer(recipe, optax.adam(1e-2))
  model = NNXMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def nnx_step(model, optimizer):
    def loss_fn(model):
      graphdef, params, rest = nnx.split(model, nnx.Param, ...)
      sparse = nnx.merge(graphdef, pgf.sparsify(params, recipe, optimizer.opt_state), rest)
      return xent(sparse(X))

    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)

  # The functional twin: the same initial params as a plain pytree.
  graphdef, params, rest = nnx.split(NNXMLP(nnx.Rngs(0)), nnx.Param, ...)
  params = nnx.to_pure_dict(params)

  def functional_step(params, opt_state):
    def loss_fn(p):
      state = nnx.State(pgf.sparsify(p, recipe, opt_state))
      return xent(nnx.merge(graphdef, state, rest)(X))

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  functional_step = jax.jit(functional_step)
  opt_state = tx.init(params)
  for _ in range(12):
    nnx_step(model, optimizer)
    params, opt_state = functional_step(params, opt_state)
  assert int(pgf.step_from_state(optimizer.opt_state)) == 12
  trained = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert_tree_close(trained, params)
  deployed = pgf.finalize(nnx.state(model, nnx.Param), recipe, optimizer.opt_state)
  assert bool(pgf.is_nm(deployed["fc1"]["kernel"][...] != 0, 1, 8, 0))


# ----------------------------------------------------------------------------- nn.scan
class ScannedBlock(nn.Module):

  @nn.compact
  def __call__(self, h, _):
    return h + nn.Dense(16, name="fc")(jnp.tanh(h)), None


class ScannedModel(nn.Module):

  @nn.compact
  def __call__(self, x):
    layers = nn.scan(ScannedBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=4)
    h, _ = layers(name="layers")(x, None)
    return nn.Dense(3, name="head")(h)


def test_nn_scan_stacked_kernels_group_within_each_layer():
  model = ScannedModel()
  params = model.init(jax.random.key(4), X)["params"]
  assert params["layers"]["fc"]["kernel"].shape == (4, 16, 16)
  default_axis = pgf.Recipe("mdgf_exp", rules=((r"layers/fc/kernel", "2:4"),), total_steps=8)
  with pytest.raises(ValueError, match=r"layers/fc/kernel shape \(4, 16, 16\).*ambiguous"):
    pgf.gradient_flow(default_axis).init(params)

  recipe = pgf.Recipe("mdgf_exp", rules=((r"layers/fc/kernel", "2:4", {"axis": 1}),),
                      total_steps=8, dense_fraction=0.125)
  tx = pgf.optimizer(recipe, optax.adam(1e-2))
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(
        lambda p: xent(model.apply({"params": pgf.sparsify(p, recipe, opt_state)}, X)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(8):
    params, opt_state, loss = train_step(params, opt_state)
    losses.append(float(loss))
  assert losses[-1] < losses[0]
  kernel = params["layers"]["fc"]["kernel"]
  deployed = pgf.finalize(params, recipe)["layers"]["fc"]["kernel"]
  for layer in range(4):
    np.testing.assert_array_equal(deployed[layer] != 0, pgf.nm_mask(kernel[layer], 2, 4, 0))
  np.testing.assert_array_equal(pgf.finalize(params, recipe)["head"]["kernel"],
                                params["head"]["kernel"])


# ----------------------------------------------------------------------------- bfloat16
def test_bfloat16_params_train_and_deploy_exact_nm():
  recipe = pgf.Recipe("sr_ste", rules=((r"fc1/kernel", "1:8"),), total_steps=12,
                      dense_fraction=0.25)
  params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), mlp_init(jax.random.key(5)))
  tx = pgf.optimizer(recipe, optax.adam(1e-2))
  params, opt_state, losses = python_loop(recipe, tx, params, 12)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
  deployed = pgf.finalize(params, recipe)
  assert deployed["fc1"]["kernel"].dtype == jnp.bfloat16
  assert bool(pgf.is_nm(deployed["fc1"]["kernel"] != 0, 1, 8, 0))
  # In the sparse phase the forward weights are the deployed weights, bit for bit.
  np.testing.assert_array_equal(
      pgf.sparsify(params, recipe, pgf.at_step(opt_state, 11))["fc1"]["kernel"],
      deployed["fc1"]["kernel"])


def test_round2_nnx_state_of_the_optimizer_says_which_subtree_to_pass():
  """Finding 9: nnx.state(optimizer) turns optax's state types into dicts; the error says to
  pass optimizer.opt_state (it said "found 0")."""
  recipe = pgf.Recipe("sr_ste", rules=((r"fc1/kernel", "1:8"),), total_steps=12)
  optimizer = nnx.Optimizer(NNXMLP(nnx.Rngs(0)), pgf.optimizer(recipe, optax.adam(1e-2)),
                            wrt=nnx.Param)
  with pytest.raises(ValueError, match=r"pass `optimizer.opt_state` of the nnx.Optimizer, not "
                                       r"nnx.state\(optimizer\)"):
    pgf.step_from_state(nnx.state(optimizer))
  assert int(pgf.step_from_state(optimizer.opt_state, recipe)) == 0
  # The wrong order is refused through nnx's Variables too.
  wrong = nnx.Optimizer(NNXMLP(nnx.Rngs(0)),
                        optax.chain(optax.adam(1e-2), pgf.gradient_flow(recipe)), wrt=nnx.Param)
  params = nnx.state(NNXMLP(nnx.Rngs(0)), nnx.Param)
  with pytest.raises(ValueError, match="must be the first transform on the raw gradients"):
    pgf.sparsify(params, recipe, wrong.opt_state)
