"""sparsify forward + gradient_flow: each method and phase against a hand-computed example."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import pgf
from pgf import Recipe

# W (4x1), rule 1:2 along axis 0: groups (w0, w1), (w2, w3); |w1| and |w2| win, so
# Phi = [0, 1, 1, 0]. The loss sum(c * W~) has dL/dW~ = c.
W = np.array([[0.1], [-0.4], [0.3], [0.2]], np.float32)
C = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
BIAS = np.array([0.5], np.float32)
PHI = np.array([0, 1, 1, 0], np.float32)

# 10 steps: dense 0-1, middle 2-7, fine-tune 8-9.
PHASES = dict(total_steps=10, dense_fraction=0.2, finetune_fraction=0.2)
RULES = ((r"layer/kernel", "1:2"),)


def params():
  return {"layer": {"kernel": jnp.asarray(W), "bias": jnp.asarray(BIAS)}}


def forward_and_gradient(recipe, step):
  """(W~, the gradient gradient_flow passes on) at a step."""
  p = params()
  tx = pgf.gradient_flow(recipe)
  state = pgf.at_step(tx.init(p), step)  # the forward reads its step from the state
  w_eff = pgf.sparsify(p, recipe, state)
  grads = jax.grad(lambda q: jnp.sum(jnp.asarray(C) * pgf.sparsify(q, recipe, state)["layer"]
                                     ["kernel"]) + jnp.sum(q["layer"]["bias"]))(p)
  np.testing.assert_array_equal(grads["layer"]["kernel"], C)  # straight-through
  shaped, new_state = tx.update(grads, state, p)
  assert int(new_state.count) == step + 1
  np.testing.assert_array_equal(shaped["layer"]["bias"], [1.0])  # unmatched: untouched
  np.testing.assert_array_equal(w_eff["layer"]["bias"], BIAS)  # bias kept
  return np.asarray(w_eff["layer"]["kernel"])[:, 0], np.asarray(shaped["layer"]["kernel"])[:, 0]


def test_dense_method_every_step():
  recipe = Recipe("dense", rules=RULES, **PHASES)
  for step in (0, 5, 9):
    w_eff, g = forward_and_gradient(recipe, step)
    np.testing.assert_array_equal(w_eff, W[:, 0])
    np.testing.assert_array_equal(g, C[:, 0])


@pytest.mark.parametrize("method", ["ste", "sr_ste", "mdgf_linear", "sdgf_stepwise"])
def test_dense_phase_is_plain_for_every_method(method):
  recipe = Recipe(method, rules=RULES, decay_coefficient=0.25 if "mdgf" in method else None,
                  sr_ste_lambda=0.5, **PHASES)
  for step in (0, 1):
    w_eff, g = forward_and_gradient(recipe, step)
    np.testing.assert_array_equal(w_eff, W[:, 0])
    np.testing.assert_array_equal(g, C[:, 0])


def test_ste():
  recipe = Recipe("ste", rules=RULES, **PHASES)
  for step in (2, 5, 8, 9):
    w_eff, g = forward_and_gradient(recipe, step)
    np.testing.assert_array_equal(w_eff, W[:, 0] * PHI)
    np.testing.assert_array_equal(g, [1.0, 2.0, 3.0, 4.0])


def test_sr_ste_adds_lambda_times_pruned_weights():
  recipe = Recipe("sr_ste", rules=RULES, sr_ste_lambda=0.5, **PHASES)
  for step in (2, 9):
    w_eff, g = forward_and_gradient(recipe, step)
    np.testing.assert_array_equal(w_eff, W[:, 0] * PHI)
    np.testing.assert_allclose(g, [1.0 + 0.5 * 0.1, 2.0, 3.0, 4.0 + 0.5 * 0.2], rtol=1e-6)


@pytest.mark.parametrize("gradient", ["decayed", "ste"])
def test_mdgf_linear_forward_and_gradient(gradient):
  # beta 0.25: D = 1, 0.75, 0.5, 0.25, 0, 0 over the middle steps 2..7, then 0 in fine-tuning.
  recipe = Recipe("mdgf_linear", rules=RULES, decay_coefficient=0.25, gradient=gradient,
                  **PHASES)
  for step, d in ((2, 1.0), (3, 0.75), (4, 0.5), (5, 0.25), (6, 0.0), (7, 0.0), (8, 0.0)):
    w_eff, g = forward_and_gradient(recipe, step)
    np.testing.assert_allclose(w_eff, [0.1 * d, -0.4, 0.3, 0.2 * d], rtol=1e-6)
    want = [1.0 * d, 2.0, 3.0, 4.0 * d] if gradient == "decayed" else [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(g, want, rtol=1e-6)


def test_mdgf_exp_middle_and_finetune():
  recipe = Recipe("mdgf_exp", rules=RULES, decay_coefficient=0.5, **PHASES)
  d = np.exp(-0.5 * 3)  # step 5 is t = 3
  w_eff, g = forward_and_gradient(recipe, 5)
  np.testing.assert_allclose(w_eff, [0.1 * d, -0.4, 0.3, 0.2 * d], rtol=1e-6)
  np.testing.assert_allclose(g, [d, 2.0, 3.0, 4.0 * d], rtol=1e-6)
  w_eff, g = forward_and_gradient(recipe, 8)  # fine-tune: hard mask, exp never reached 0
  np.testing.assert_array_equal(w_eff, W[:, 0] * PHI)
  np.testing.assert_array_equal(g, [0.0, 2.0, 3.0, 0.0])


def test_sdgf_stepwise_uses_stage_pattern_and_ste():
  # Target 1:4 over one group of 4: stages 3:4 (steps 2-3), 2:4 (4-5), 1:4 (6-...).
  w = jnp.array([[0.4], [-0.1], [0.3], [0.2]])
  recipe = Recipe("sdgf_stepwise", rules=((r"w", "1:4"),), **PHASES)
  expected = {1: [0.4, -0.1, 0.3, 0.2], 2: [0.4, 0.0, 0.3, 0.2], 4: [0.4, 0.0, 0.3, 0.0],
              6: [0.4, 0.0, 0.0, 0.0], 9: [0.4, 0.0, 0.0, 0.0]}
  tx = pgf.gradient_flow(recipe)
  for step, want in expected.items():
    np.testing.assert_allclose(pgf.sparsify({"w": w}, recipe, step)["w"][:, 0], want)
    g = {"w": jnp.arange(1.0, 5.0)[:, None]}
    shaped, _ = tx.update(g, pgf.GradientFlowState(jnp.int32(step)), {"w": w})
    np.testing.assert_array_equal(shaped["w"], g["w"])


def test_combined_mdgf_sdgf_decays_positions_pruned_at_current_stage():
  w = jnp.array([[0.4], [-0.1], [0.3], [0.2]])
  recipe = Recipe("mdgf_linear+sdgf_stepwise", rules=((r"w", "1:4"),), decay_coefficient=0.25,
                  **PHASES)
  # step 4: stage 2:4 keeps 0.4, 0.3; D = 0.5.
  out = pgf.sparsify({"w": w}, recipe, pgf.at_step(pgf.gradient_flow(recipe).init({"w": w}),
                                                   4))["w"][:, 0]
  np.testing.assert_allclose(out, [0.4, -0.05, 0.3, 0.1], rtol=1e-6)
  shaped, _ = pgf.gradient_flow(recipe).update({"w": jnp.ones((4, 1))},
                                               pgf.GradientFlowState(jnp.int32(4)), {"w": w})
  np.testing.assert_allclose(shaped["w"][:, 0], [1.0, 0.5, 1.0, 0.5])


def test_update_without_params_is_a_clear_error():
  recipe = Recipe("ste", rules=RULES, **PHASES)
  tx = optax.chain(pgf.gradient_flow(recipe), optax.sgd(0.1))
  state = tx.init(params())
  with pytest.raises(ValueError, match=r"needs the params.*tx.update\(grads, opt_state, params\)"):
    tx.update(params(), state)


def test_state_is_only_a_count():
  recipe = Recipe("mdgf_exp", rules=RULES, **PHASES)
  state = pgf.gradient_flow(recipe).init(params())
  assert isinstance(state, pgf.GradientFlowState)
  assert jax.tree.leaves(state) == [state.count] and state.count.dtype == jnp.int32


def test_init_checks_params_before_compiling():
  recipe = Recipe("ste", rules=((r"nothing/here", "1:2"), (r"layer/bias", "1:4", {"allow_1d": True})), **PHASES)
  with pytest.raises(ValueError) as info:
    pgf.gradient_flow(recipe).init(params())
  message = str(info.value)
  assert "rules[0] pattern 'nothing/here' matches no parameter" in message
  assert "layer/bias shape (1,)" in message and "divisible by 4" in message


def test_geometric_divisibility_error_suggests_lower_k():
  recipe = Recipe("sdgf_geometric", rules=((r"w", "1:4"),), sdgf_k=8, **PHASES)
  with pytest.raises(ValueError, match=r"w shape \(16, 2\).*'8:32'.*lower sdgf_k"):
    pgf.gradient_flow(recipe).init({"w": jnp.ones((16, 2))})


def _train_step(recipe, tx):
  def loss_fn(p, opt_state, x, y):
    w = pgf.sparsify(p, recipe, opt_state)
    return jnp.mean((x @ w["ff"]["kernel"] + w["ff"]["bias"] - y) ** 2)

  def step_fn(p, opt_state, x, y):
    grads = jax.grad(loss_fn)(p, opt_state, x, y)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  return step_fn


@pytest.mark.parametrize("method", ["ste", "sr_ste", "mdgf_exp", "sdgf_stepwise",
                                    "sdgf_geometric", "mdgf_cosine+sdgf_geometric"])
def test_one_trace_for_the_whole_run(method):
  """Phases, D(j) and SDGF stages are data: one compilation covers every step."""
  recipe = Recipe(method, rules=((r"ff/kernel", "1:4"),), total_steps=12, dense_fraction=0.2,
                  finetune_fraction=0.2, sdgf_k=2)
  tx = optax.chain(pgf.gradient_flow(recipe), optax.adam(1e-2))
  p = {"ff": {"kernel": jax.random.normal(jax.random.key(0), (16, 3)), "bias": jnp.zeros(3)}}
  x = jax.random.normal(jax.random.key(1), (8, 16))
  y = jnp.ones((8, 3))
  step_fn = jax.jit(chex.assert_max_traces(_train_step(recipe, tx), n=1))
  opt_state = tx.init(p)
  for _ in range(14):
    p, opt_state = step_fn(p, opt_state, x, y)
  chex.clear_trace_counter()
  final = pgf.finalize(p, recipe)["ff"]["kernel"]
  assert (np.asarray(final != 0).reshape(4, 4, 3).sum(axis=1) <= 1).all()


def test_mask_update_every_holds_masks_between_refreshes():
  recipe = Recipe("ste", rules=((r"w", "1:2"),), total_steps=100, dense_fraction=0.0,
                  finetune_fraction=0.0, mask_update_every=3)
  tx = pgf.gradient_flow(recipe)
  w0 = jnp.array([[1.0], [0.5]])
  state = tx.init({"w": w0})
  assert isinstance(state, pgf.GradientFlowMaskState)
  with pytest.raises(TypeError, match=r"Pass the optimizer state.*sparsify\(params, recipe, opt_state"):
    pgf.sparsify({"w": w0}, recipe, 0)
  swapped = jnp.array([[0.5], [1.0]])  # the order flips after step 0
  seen = []
  for step in range(5):
    w = w0 if step == 0 else swapped
    assert int(pgf.step_from_state(state)) == step
    seen.append(np.asarray(pgf.sparsify({"w": w}, recipe, state)["w"][:, 0]))
    _, state = tx.update({"w": jnp.zeros((2, 1))}, state, {"w": w})
  # Steps 1-2 keep the step-0 mask (keep row 0); step 3 refreshes (keep row 1).
  np.testing.assert_array_equal(np.stack(seen), [[1.0, 0], [0.5, 0], [0.5, 0], [0, 1.0],
                                                 [0, 1.0]])


def test_state_checkpoints_with_orbax(tmp_path):
  for every in (1, 4):
    recipe = Recipe("mdgf_exp", rules=RULES, mask_update_every=every, **PHASES)
    tx = optax.chain(pgf.gradient_flow(recipe), optax.adamw(1e-3))
    state = tx.init(params())
    _, state = tx.update(params(), state, params())
    with ocp.CheckpointManager(tmp_path / f"every{every}") as manager:
      manager.save(1, args=ocp.args.StandardSave(state))
      manager.wait_until_finished()
      restored = manager.restore(1, args=ocp.args.StandardRestore(state))
    chex.assert_trees_all_equal(restored, state)
    assert int(pgf.step_from_state(restored, recipe)) == 1
    assert type(restored[0]).recipe == recipe  # the recipe fingerprint comes back with the target
