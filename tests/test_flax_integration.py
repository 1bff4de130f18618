"""The public API inside real Flax training loops (linen and NNX), plus the bug classes of the
authors' released code: bias kept, FF and QKV patterns both honoured, a non-default axis
through every phase."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pgf


class Block(nn.Module):
  """Attention-free block with separately addressable Q/K/V and FF kernels."""

  @nn.compact
  def __call__(self, x):
    q = nn.Dense(16, name="query")(x)
    k = nn.Dense(16, name="key")(x)
    v = nn.Dense(16, name="value")(x)
    h = x + nn.Dense(x.shape[-1], name="out")(jax.nn.tanh(q * k) * v)
    h = h + nn.Dense(x.shape[-1], name="fc2")(nn.gelu(nn.Dense(32, name="fc1")(h)))
    return nn.Dense(3, name="head")(h)


def group_counts(kernel, m, axis):
  """Nonzeros per group of m along axis (kernel is 2-D)."""
  k = np.moveaxis(np.asarray(kernel), axis, 0)
  return (k != 0).reshape(k.shape[0] // m, m, -1).sum(axis=1)


def data():
  x = jax.random.normal(jax.random.key(0), (32, 16))
  y = jnp.argmax(x[:, :3], axis=-1)
  return x, y


RULES = ((r".*fc[12]/kernel", "1:8"), (r".*(query|key|value)/kernel", "1:4"))


def train_linen(method, rules=RULES, steps=12, **kw):
  model = Block()
  x, y = data()
  params = model.init(jax.random.key(1), x)["params"]
  recipe = pgf.Recipe(method, rules=rules, total_steps=steps, dense_fraction=0.2,
                      finetune_fraction=0.2, sdgf_k=2, **kw)
  tx = optax.chain(pgf.gradient_flow(recipe), optax.adamw(3e-3))
  opt_state = tx.init(params)

  def loss_fn(p, opt_state):
    logits = model.apply({"params": pgf.sparsify(p, recipe, opt_state)}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def train_step(p, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(p, opt_state)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  effective_fn = jax.jit(lambda p, opt_state: pgf.sparsify(p, recipe, opt_state))
  losses, effective = [], []
  for step in range(steps):
    assert int(pgf.step_from_state(opt_state)) == step
    effective.append((params, effective_fn(params, opt_state)))
    params, opt_state, loss = train_step(params, opt_state)
    losses.append(float(loss))
  return model, recipe, params, losses, effective


@pytest.mark.parametrize("method", ["sr_ste", "mdgf_exp", "sdgf_geometric"])
def test_linen_training_ends_in_exact_nm(method):
  model, recipe, params, losses, _ = train_linen(method)
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
  deployed = pgf.finalize(params, recipe)
  for name, m in (("fc1", 8), ("fc2", 8), ("query", 4), ("key", 4), ("value", 4)):
    assert (group_counts(deployed[name]["kernel"], m, 0) == 1).all(), name
    np.testing.assert_array_equal(deployed[name]["bias"], params[name]["bias"])  # bias kept
  for name in ("out", "head"):
    np.testing.assert_array_equal(deployed[name]["kernel"], params[name]["kernel"])
  # The deployed model is exactly x @ (W * Phi) + b layer by layer, bias included.
  x, _ = data()
  logits = model.apply({"params": deployed}, x)
  assert np.isfinite(np.asarray(logits)).all()


def test_ff_and_qkv_patterns_both_honoured_in_every_phase():
  """The authors' code let the QKV pattern overwrite the FF one."""
  _, recipe, _, _, effective = train_linen("ste")
  for step, (_, eff) in enumerate(effective):
    if recipe.phase(step) == "dense":
      continue
    assert (group_counts(eff["fc1"]["kernel"], 8, 0) == 1).all(), step
    assert (group_counts(eff["fc2"]["kernel"], 8, 0) == 1).all(), step
    assert (group_counts(eff["query"]["kernel"], 4, 0) == 1).all(), step
    assert (group_counts(eff["key"]["kernel"], 4, 0) == 1).all(), step


@pytest.mark.parametrize("method", ["sdgf_stepwise", "mdgf_linear", "ste"])
def test_non_default_axis_through_all_phases(method):
  """Groups along the output axis (axis=1) at every phase and in finalize."""
  rules = ((r"fc1/kernel", "1:4", 1),)
  _, recipe, params, _, effective = train_linen(method, rules=rules, decay_coefficient=0.5
                                                if method == "mdgf_linear" else None)
  phases = set()
  for step, (raw, eff) in enumerate(effective):
    phase = recipe.phase(step)
    phases.add(phase)
    if phase == "dense":
      np.testing.assert_array_equal(eff["fc1"]["kernel"], raw["fc1"]["kernel"])
      continue
    n, m = recipe.pattern(0, step)
    # Kept entries pass unscaled; pruned ones are scaled by D < 1 (zero for hard masks).
    unscaled = np.asarray(eff["fc1"]["kernel"]) == np.asarray(raw["fc1"]["kernel"])
    if float(recipe.decay(step)) < 1.0:
      assert (group_counts(unscaled, m, 1) == n).all(), (step, n, m)
  assert phases == {"dense", "decay" if "mdgf" in method else
                    ("structure" if "sdgf" in method else "sparse"), "finetune"}
  deployed = pgf.finalize(params, recipe)["fc1"]["kernel"]
  assert (group_counts(deployed, 4, 1) == 1).all()
  assert not (group_counts(deployed, 4, 0) == 1).all()  # not grouped along axis 0


class NNXBlock(nnx.Module):

  def __init__(self, rngs):
    self.fc1 = nnx.Linear(16, 32, rngs=rngs)
    self.fc2 = nnx.Linear(32, 3, rngs=rngs)

  def __call__(self, x):
    return self.fc2(nnx.gelu(self.fc1(x)))


def test_nnx_training_through_split_and_merge():
  model = NNXBlock(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  recipe = pgf.Recipe("mdgf_exp", rules=((r"fc[12]/kernel", "1:16"),), total_steps=10,
                      dense_fraction=0.0)
  tx = optax.chain(pgf.gradient_flow(recipe), optax.adamw(3e-3))
  opt_state = tx.init(params)
  x, y = data()

  def loss_fn(p, opt_state):
    logits = nnx.merge(graphdef, pgf.sparsify(p, recipe, opt_state), rest)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def train_step(p, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(p, opt_state)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  def deployed_loss(p):
    logits = nnx.merge(graphdef, pgf.finalize(p, recipe), rest)(x)
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())

  before = deployed_loss(params)
  for _ in range(15):
    params, opt_state, loss = train_step(params, opt_state)
    assert np.isfinite(float(loss))
  assert deployed_loss(params) < before  # training improved the 1:16 model
  deployed = nnx.merge(graphdef, pgf.finalize(params, recipe), rest)
  assert (group_counts(deployed.fc1.kernel.value, 16, 0) == 1).all()
  assert (group_counts(deployed.fc2.kernel.value, 16, 0) == 1).all()
  np.testing.assert_array_equal(deployed.fc1.bias.value, params["fc1"]["bias"].value)
  assert np.isfinite(np.asarray(deployed(x))).all()
