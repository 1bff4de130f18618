"""Integration mistakes fail loudly, and the deployed model is the model that was trained.

One test (or group) per mistake a plug-in user can make: stored masks ignored by finalize, the
transform after Adam, a rank-3 kernel grouped across layers, a regex that prunes biases, a float
or swapped step, masks that belong to another recipe, a recipe that does not round-trip.
"""

import dataclasses
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pgf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp_params(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"fc1": {"kernel": jax.random.normal(k1, (16, 8)), "bias": jnp.zeros(8)},
          "fc2": {"kernel": jax.random.normal(k2, (8, 4)), "bias": jnp.zeros(4)}}


def forward(params, x):
  return jnp.tanh(x @ params["fc1"]["kernel"] + params["fc1"]["bias"]) @ params["fc2"]["kernel"]


X = jax.random.normal(jax.random.key(7), (32, 16))
Y = jax.random.normal(jax.random.key(8), (32, 4))


def run(recipe, tx, params, steps):
  """A plain training loop that follows the README: step and masks from the optimizer state."""
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state):
    loss_fn = lambda p: jnp.mean((forward(pgf.sparsify(p, recipe, opt_state), X) - Y) ** 2)
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(steps):
    params, opt_state = train_step(params, opt_state)
  return params, opt_state


# ----------------------------------------------------------------------------- 1. stored masks
def test_finalize_deploys_the_stored_masks_the_forward_used():
  recipe = pgf.Recipe("sdgf_stepwise", rules=((r"fc1/kernel", "1:4"),), total_steps=24,
                      dense_fraction=0.25, finetune_fraction=0.25, mask_update_every=5)
  # A large learning rate moves W far between refreshes, so the masks of the final |W| are
  # not the masks the last steps were trained with.
  params, opt_state = run(recipe, pgf.optimizer(recipe, optax.sgd(0.5)), mlp_params(), 24)
  stored = pgf.masks_from_state(opt_state)["fc1/kernel"]
  assert bool(pgf.is_nm(stored, 1, 4, 0))
  deployed = pgf.finalize(params, recipe, masks=pgf.masks_from_state(opt_state))
  np.testing.assert_array_equal(deployed["fc1"]["kernel"],
                                jnp.where(stored, params["fc1"]["kernel"], 0.0))
  # The deployed weights are the forward weights of the last trained step.
  last = pgf.sparsify(params, recipe, pgf.at_step(opt_state, 23))
  np.testing.assert_array_equal(deployed["fc1"]["kernel"], last["fc1"]["kernel"])
  np.testing.assert_array_equal(deployed["fc1"]["bias"], params["fc1"]["bias"])
  np.testing.assert_array_equal(pgf.finalize(params, recipe, opt_state)["fc1"]["kernel"],
                                deployed["fc1"]["kernel"])
  # Recomputing from |W| would deploy a different model (what finalize did before).
  recomputed = pgf.finalize(params, dataclasses.replace(recipe, mask_update_every=1))
  recomputed = recomputed["fc1"]["kernel"]
  assert np.any(np.asarray(recomputed) != np.asarray(deployed["fc1"]["kernel"]))


def test_finalize_replaces_a_stored_mask_of_an_earlier_stage():
  recipe = pgf.Recipe("sdgf_stepwise", rules=((r"fc1/kernel", "1:4"),), total_steps=24,
                      dense_fraction=0.25, finetune_fraction=0.25, mask_update_every=5)
  params, opt_state = run(recipe, pgf.optimizer(recipe, optax.sgd(0.1)), mlp_params(), 8)
  stored = pgf.masks_from_state(opt_state)["fc1/kernel"]
  assert bool(pgf.is_nm(stored, 3, 4, 0))  # the first stage, 3:4
  deployed = pgf.finalize(params, recipe, masks=pgf.masks_from_state(opt_state))
  every_step = dataclasses.replace(recipe, mask_update_every=1)
  np.testing.assert_array_equal(deployed["fc1"]["kernel"],
                                pgf.finalize(params, every_step)["fc1"]["kernel"])
  assert bool(pgf.is_nm(deployed["fc1"]["kernel"] != 0, 1, 4, 0))


# ----------------------------------------------------------------------------- 2. order
@pytest.mark.parametrize("inner", [
    lambda: optax.adam(1e-3), lambda: optax.adamw(optax.cosine_decay_schedule(1e-3, 10)),
    lambda: optax.sgd(0.1, momentum=0.9),
    lambda: optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)],
    ids=["adam", "adamw_schedule", "sgd_momentum", "inject_hyperparams"])
def test_gradient_flow_after_a_rescaling_transform_is_an_error(inner):
  recipe = pgf.Recipe("sr_ste", rules=((r"fc1/kernel", "1:4"),), total_steps=10)
  params = mlp_params()
  wrong = optax.chain(inner(), pgf.gradient_flow(recipe))
  with pytest.raises(ValueError, match="must be the first transform on the raw gradients"):
    pgf.step_from_state(wrong.init(params))
  # Also inside a wrapper.
  with pytest.raises(ValueError, match="must be the first transform on the raw gradients"):
    pgf.step_from_state(optax.MultiSteps(wrong, 2).init(params))
  # The right order, built either way, is accepted.
  for right in (pgf.optimizer(recipe, inner()),
                optax.chain(optax.clip_by_global_norm(1.0), pgf.gradient_flow(recipe),
                            inner())):
    assert int(pgf.step_from_state(right.init(params))) == 0


def test_optimizer_puts_the_method_first_so_sr_ste_decays_pruned_weights():
  recipe = pgf.Recipe("sr_ste", rules=((r"fc1/kernel", "1:4"),), total_steps=10,
                      dense_fraction=0.0, sr_ste_lambda=0.1)
  params = mlp_params()
  tx = pgf.optimizer(recipe, optax.sgd(1.0))
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  kernel = params["fc1"]["kernel"]
  phi = pgf.nm_mask(kernel, 1, 4, 0)
  after = kernel + updates["fc1"]["kernel"]
  np.testing.assert_allclose(after, jnp.where(phi, kernel, 0.9 * kernel), rtol=1e-6)
  with pytest.raises(TypeError, match="give the optimizer that follows"):
    pgf.optimizer(recipe)
  with pytest.raises(TypeError, match="inner\\[0\\] must be an optax.GradientTransformation"):
    pgf.optimizer(recipe, 1e-3)


# ----------------------------------------------------------------------------- 4, 5. rules
def test_rank3_leaf_needs_an_explicit_axis():
  stacked = {"layers": {"kernel": jnp.ones((4, 16, 8))}}  # nn.scan: (layers, in, out)
  recipe = pgf.Recipe("ste", rules=((r"layers/kernel", "2:4"),), total_steps=10)
  with pytest.raises(ValueError) as info:
    pgf.sparsify(stacked, recipe, 5)
  message = str(info.value)
  assert "layers/kernel shape (4, 16, 8)" in message and "ambiguous" in message
  assert "1 for a Dense kernel stacked by nn.scan (layers, in, out)" in message
  assert "{'axis': 1}" in message
  with pytest.raises(ValueError, match="ambiguous"):
    pgf.gradient_flow(recipe).init(stacked)
  explicit = pgf.Recipe("ste", rules=((r"layers/kernel", "2:4", 1),), total_steps=10)
  w = jax.random.normal(jax.random.key(0), (4, 16, 8))
  deployed = pgf.finalize({"layers": {"kernel": w}}, explicit)["layers"]["kernel"]
  for layer in range(4):  # every layer is 2:4 along its own input axis
    np.testing.assert_array_equal(deployed[layer] != 0, pgf.nm_mask(w[layer], 2, 4, 0))


def test_a_rule_matching_a_bias_is_an_error_unless_opted_in():
  params = mlp_params()
  broad = pgf.Recipe("ste", rules=((r"fc1/.*", "1:8"),), total_steps=10)
  with pytest.raises(ValueError, match=r"fc1/bias shape \(8,\).*1-D leaf.*allow_1d"):
    pgf.finalize(params, broad)
  with pytest.raises(ValueError, match="1-D leaf"):
    pgf.gradient_flow(broad).init(params)
  opted = pgf.Recipe("ste", rules=((r"fc1/.*", "1:8", {"allow_1d": True}),), total_steps=10)
  bias = jnp.arange(8.0)
  deployed = pgf.finalize(dict(params, fc1={"kernel": params["fc1"]["kernel"], "bias": bias}),
                          opted)
  np.testing.assert_array_equal(deployed["fc1"]["bias"], jnp.where(bias == 7, 7.0, 0.0))
  with pytest.raises(ValueError, match="allow_1d=1 must be True or False"):
    pgf.Recipe("ste", rules=((r"fc1/.*", "1:8", {"allow_1d": 1}),))


# ----------------------------------------------------------------------------- 6. contract
def test_swapped_arguments_name_the_mistake():
  recipe = pgf.Recipe("ste", rules=((r"fc1/kernel", "1:4"),), total_steps=10)
  params = mlp_params()
  for fn in (pgf.sparsify, pgf.current_masks):
    with pytest.raises(TypeError, match="params and the recipe are swapped"):
      fn(recipe, params, 3)
  with pytest.raises(TypeError, match="params and the recipe are swapped"):
    pgf.finalize(recipe, params)
  with pytest.raises(TypeError, match="must be a pgf.Recipe, got dict"):
    pgf.gradient_flow(params)


@pytest.mark.parametrize("step", [10.7, 10.0, np.float32(3), jnp.float32(3), True, "3"])
def test_a_non_integer_step_is_an_error(step):
  recipe = pgf.Recipe("mdgf_exp", rules=((r"fc1/kernel", "1:4"),), total_steps=20)
  with pytest.raises(TypeError, match="step"):
    pgf.sparsify(mlp_params(), recipe, step)


def test_a_float_step_is_an_error_under_jit_too():
  recipe = pgf.Recipe("mdgf_exp", rules=((r"fc1/kernel", "1:4"),), total_steps=20)
  with pytest.raises(TypeError, match="dtype float32"):
    jax.jit(lambda p, s: pgf.sparsify(p, recipe, s))(mlp_params(), jnp.float32(10.7))
  ste = pgf.Recipe("ste", rules=((r"fc1/kernel", "1:4"),), total_steps=20)
  for step in (3, np.int64(3), jnp.int32(3), jnp.uint8(3)):  # integers of any kind are fine
    pgf.sparsify(mlp_params(), ste, step)


def test_masks_from_another_recipe_are_an_error():
  trained = pgf.Recipe("ste", rules=((r"fc1/kernel", "1:4"),), total_steps=20,
                       mask_update_every=4)
  opt_state = pgf.optimizer(trained, optax.sgd(0.1)).init(mlp_params())
  masks = pgf.masks_from_state(opt_state)
  other = pgf.Recipe("ste", rules=((r"fc[12]/kernel", "1:4"),), total_steps=20,
                     mask_update_every=4)
  with pytest.raises(ValueError, match=r"different recipe.*no mask for \['fc2/kernel'\]"):
    pgf.finalize(mlp_params(), other, masks=masks)
  with pytest.raises(ValueError, match=r"recipe differs.*rules\[0\].pattern 'fc\[12\]/kernel' "
                                       r"vs 'fc1/kernel'"):
    pgf.sparsify(mlp_params(), other, opt_state)
  with pytest.raises(TypeError, match="pass the state instead"):
    pgf.sparsify(mlp_params(), trained, 3, masks=masks)
  with pytest.raises(TypeError, match="keeps the masks in the optimizer state"):
    pgf.sparsify(mlp_params(), trained, 3)


def test_step_under_multisteps_counts_real_updates():
  recipe = pgf.Recipe("mdgf_exp", rules=((r"fc1/kernel", "1:4"),), total_steps=20)
  tx = optax.MultiSteps(pgf.optimizer(recipe, optax.sgd(0.1)), every_k_schedule=3)
  params = mlp_params()
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for micro in range(7):
    _, opt_state = tx.update(grads, opt_state, params)
  assert int(pgf.step_from_state(opt_state)) == 2  # 7 micro-steps = 2 updates (+1 pending)


# ----------------------------------------------------------------------------- 7. smaller
@pytest.mark.parametrize("kwargs", [
    dict(method="mdgf_exp", rules=((r".*/mlp/.*/kernel", "1:16"),), total_steps=1000),
    dict(method="sdgf_custom",
         rules=((r"a/kernel", "1:4", {"axis": (0, 1), "stages": ("2:4", "1:4")}),
                (r"b/.*", "2:8", {"allow_1d": True})),
         sdgf_stages=("4:8", "2:8"), total_steps=100, mask_update_every=3,
         decay_coefficient=0.01, gradient="ste"),
    dict(method="mdgf_linear+sdgf_geometric", rules=((r"x", "1:8", 2),), total_steps=50,
         sdgf_k=4),
    dict(method="dense")], ids=["mdgf", "custom", "combined", "dense"])
def test_recipe_round_trips_through_json(kwargs):
  recipe = pgf.Recipe(**kwargs)
  assert pgf.Recipe.from_dict(recipe.to_dict()) == recipe
  assert pgf.Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_recipe_from_dict_names_bad_fields():
  with pytest.raises(ValueError, match="unknown fields \\['methd' \\(did you mean 'method'"):
    pgf.Recipe.from_dict({"methd": "ste"})
  with pytest.raises(ValueError, match="needs 'pattern' and 'nm'"):
    pgf.Recipe.from_dict({"method": "ste", "rules": [{"pattern": "x"}]})


def test_subtree_with_a_whole_model_recipe():
  params = {"encoder": mlp_params(0), "decoder": mlp_params(1)}
  recipe = pgf.Recipe("ste", rules=((r"encoder/fc1/kernel", "1:4"),
                                    (r"decoder/fc1/kernel", "1:8")), total_steps=10)
  whole = pgf.sparsify(params, recipe, 5)
  sub = pgf.sparsify({"encoder": params["encoder"]}, recipe, 5, allow_unmatched_rules=True)
  np.testing.assert_array_equal(sub["encoder"]["fc1"]["kernel"],
                                whole["encoder"]["fc1"]["kernel"])
  with pytest.raises(ValueError, match="matches no parameter"):
    pgf.sparsify({"encoder": params["encoder"]}, recipe, 5)
  finalized = pgf.finalize({"decoder": params["decoder"]}, recipe, allow_unmatched_rules=True)
  assert bool(pgf.is_nm(finalized["decoder"]["fc1"]["kernel"] != 0, 1, 8, 0))


def test_the_package_explains_itself():
  """Docstrings point to docs in the repo, not to design notes users never see."""
  paths = [os.path.join(ROOT, "README.md")] + [
      p for d in ("pgf", "configs", "experiments", "docs")
      for p in glob.glob(os.path.join(ROOT, d, "**", "*.*"), recursive=True)
      if p.endswith((".py", ".md", ".sh"))]
  for path in paths:
    with open(path) as f:
      text = f.read()
    for private in ("DESIGN.md", "PAPER.md", "../shared"):
      assert private not in text, (path, private)
  with open(os.path.join(ROOT, "docs", "method.md")) as f:
    text = f.read()
  for method in pgf.METHODS:
    assert f"`{method}`" in text, method


# ------------------------------------------------------------------ SDGF-geometric k per rule
def _kernels(**shapes):
  return {name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in shapes.items()}


def test_fit_sdgf_k_lowers_k_per_rule_until_every_stage_divides():
  # ViT-B at 1:128: fc1 groups 768 inputs, fc2 3072. k=8 would start at 8:1024 (768 % 1024 != 0).
  params = {"fc1": _kernels(kernel=(768, 3072)), "fc2": _kernels(kernel=(3072, 768)),
            "qk": _kernels(kernel=(768, 12, 64))}
  recipe = pgf.Recipe(method="sdgf_geometric", total_steps=1000, sdgf_k=8,
                      rules=((r"fc[12]/kernel", "1:128"), (r"qk/kernel", "1:4", 0)))
  with pytest.raises(ValueError, match=r"8:1024.*let pgf.fit_sdgf_k"):
    pgf.check_params(params, recipe)
  fitted, notes = pgf.fit_sdgf_k(params, recipe)
  # 768 = 3 * 256: the largest power of two k with k*128 | 768 and k*128 | 3072 is 2.
  assert fitted.rules[0].sdgf_k == 2
  assert fitted.stages(0) == ((2, 256), (1, 128))
  assert fitted.rules[1].sdgf_k is None and fitted.stages(1) == recipe.stages(1)  # 8:32 fits
  assert len(notes) == 1 and "sdgf_k 8 -> 2" in notes[0] and "768, 3072" in notes[0]
  pgf.check_params(params, fitted)
  assert pgf.Recipe.from_dict(json.loads(json.dumps(fitted.to_dict()))) == fitted
  # The fitted schedule runs end to end on real arrays and ends exact 1:128.
  real = jax.tree.map(lambda s: jax.random.normal(jax.random.key(0), s.shape), params)
  for step in (0, 100, 500, 999):
    pgf.sparsify(real, fitted, step)
  final = pgf.finalize(real, fitted)
  assert bool(pgf.is_nm(final["fc1"]["kernel"] != 0, 1, 128, 0))


def test_fit_sdgf_k_leaves_what_it_should_not_touch():
  params = {"fc": _kernels(kernel=(96, 32))}
  other = pgf.Recipe(method="sdgf_stepwise", total_steps=100, rules=((r"fc/kernel", "1:32"),))
  assert pgf.fit_sdgf_k(params, other) == (other, [])
  fits = pgf.Recipe(method="mdgf_exp+sdgf_geometric", total_steps=100, sdgf_k=2,
                    rules=((r"fc/kernel", "1:16"),))
  assert pgf.fit_sdgf_k(params, fits) == (fits, [])  # 2:32 divides 96
  # A target M that does not divide is check_params' error to report, not fit's to hide.
  bad = pgf.Recipe(method="sdgf_geometric", total_steps=100, rules=((r"fc/kernel", "1:64"),))
  assert pgf.fit_sdgf_k(params, bad) == (bad, [])
  with pytest.raises(ValueError, match="divisible by 64"):
    pgf.check_params(params, bad)
  # An explicit per-rule k is the user's choice and is kept (and checked).
  pinned = pgf.Recipe(method="sdgf_geometric", total_steps=100,
                      rules=((r"fc/kernel", "1:16", {"sdgf_k": 4}),))
  assert pgf.fit_sdgf_k(params, pinned) == (pinned, [])
  with pytest.raises(ValueError, match="4:64"):
    pgf.check_params(params, pinned)
  with pytest.raises(ValueError, match=r"rules\[0\].*sdgf_k=3 must be a power of two"):
    pgf.Recipe(method="sdgf_geometric", total_steps=100,
               rules=((r"fc/kernel", "1:16", {"sdgf_k": 3}),))


# ===================================================================== round 2 (issue 28)
# The optimizer state is the one source of truth: sparsify/finalize/target_masks/deploy read
# the step and the stored masks from it and check, at trace time, that gradient_flow comes
# first on raw gradients and was built from the same recipe.
SR_STE = pgf.Recipe("sr_ste", rules=((r"fc1/kernel", "1:4"),), total_steps=10,
                    sr_ste_lambda=2e-2)


def _named(*pairs):
  return optax.named_chain(*pairs)


WRONG_ORDERS = {
    "adam": lambda gf: optax.chain(optax.adam(1e-3), gf),
    "named_chain": lambda gf: _named(("adam", optax.adam(1e-3)), ("pgf", gf)),
    "prodigy": lambda gf: optax.chain(optax.contrib.prodigy(), gf),
    "dadapt_adamw": lambda gf: optax.chain(optax.contrib.dadapt_adamw(), gf),
    "multisteps": lambda gf: optax.MultiSteps(optax.chain(optax.adam(1e-3), gf), 2),
    "apply_if_finite": lambda gf: optax.apply_if_finite(optax.chain(optax.adam(1e-3), gf), 3),
    "multi_transform": lambda gf: optax.multi_transform(
        {"a": optax.chain(optax.adam(1e-3), gf), "b": optax.sgd(0.1)},
        {"fc1": {"kernel": "a", "bias": "b"}, "fc2": {"kernel": "b", "bias": "b"}}),
    "masked_adam": lambda gf: optax.chain(
        optax.masked(optax.adam(1e-3), {"fc1": {"kernel": True, "bias": False},
                                        "fc2": {"kernel": False, "bias": False}}), gf),
    "inject_adamw": lambda gf: optax.chain(
        optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3), gf),
    "schedule": lambda gf: optax.chain(optax.scale_by_schedule(optax.linear_schedule(1, 0, 9)),
                                       gf),
    "inside_schedule_free": lambda gf: optax.contrib.schedule_free(
        optax.chain(optax.adam(1e-3), gf), 1e-3),
}


@pytest.mark.parametrize("build", WRONG_ORDERS.values(), ids=WRONG_ORDERS.keys())
def test_round2_wrong_order_is_refused_where_the_state_is_read(build):
  """Finding 1a/1b: every optax container is walked by structure; the forward, finalize and
  deploy all refuse the state (the loop can no longer skip the check)."""
  params = mlp_params()
  opt_state = build(pgf.gradient_flow(SR_STE)).init(params)
  order = "must be the first transform on the raw gradients"
  for read in (lambda: pgf.sparsify(params, SR_STE, opt_state),
               lambda: jax.jit(lambda s: pgf.sparsify(params, SR_STE, s))(opt_state),
               lambda: pgf.finalize(params, SR_STE, opt_state),
               lambda: pgf.step_from_state(opt_state)):
    with pytest.raises(ValueError, match=order):
      read()
  from pgf import deploy
  with pytest.raises(ValueError, match=order):
    deploy.compress_params(params, SR_STE, opt_state)


RIGHT_ORDERS = {
    "optimizer": lambda gf: optax.chain(gf, optax.adamw(1e-3)),
    "clip_first": lambda gf: optax.chain(optax.clip_by_global_norm(1.0), gf, optax.adam(1e-3)),
    "clip_value_first": lambda gf: optax.chain(optax.clip(1.0), gf, optax.adam(1e-3)),
    "injected_clip_first": lambda gf: optax.chain(
        optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=1.0), gf,
        optax.adamw(1e-3)),
    "zero_nans_first": lambda gf: optax.chain(optax.zero_nans(), gf, optax.adam(1e-3)),
    "named_chain": lambda gf: _named(("pgf", gf), ("adam", optax.adam(1e-3))),
    "multisteps": lambda gf: optax.MultiSteps(optax.chain(gf, optax.adam(1e-3)), 2),
    "parallel_branch": lambda gf: optax.multi_transform(
        {"a": optax.chain(gf, optax.adam(1e-3)), "b": optax.adam(1e-3)},
        {"fc1": {"kernel": "a", "bias": "b"}, "fc2": {"kernel": "b", "bias": "b"}}),
    "schedule_free": lambda gf: optax.contrib.schedule_free(optax.chain(gf, optax.adam(1e-3)),
                                                            1e-3),
}


@pytest.mark.parametrize("build", RIGHT_ORDERS.values(), ids=RIGHT_ORDERS.keys())
def test_round2_right_orders_and_clipping_are_accepted(build):
  """Finding 1c: clipping (plain or injected) first is no false refusal."""
  params = mlp_params()
  tx = build(pgf.gradient_flow(SR_STE))
  opt_state = tx.init(params)
  grads = jax.grad(lambda p: jnp.mean(forward(pgf.sparsify(p, SR_STE, opt_state), X) ** 2))(
      params)
  _, opt_state = tx.update(grads, opt_state, params)
  assert int(pgf.step_from_state(opt_state, SR_STE)) in (0, 1)  # 0: MultiSteps mid-accumulation
  pgf.sparsify(params, SR_STE, opt_state)
  pgf.finalize(params, SR_STE, opt_state)


def test_round2_own_counter_loops_cannot_skip_the_checks():
  """Finding 1a: a loop with its own step counter. For methods whose gradient_flow shapes the
  gradient an integer step is refused with the fix; for the others it is harmless (the model is
  a function of (recipe, step) alone) and still accepted."""
  params = mlp_params()
  for step in (3, jnp.int32(3)):
    with pytest.raises(TypeError, match=r"SR-STE's term.*pgf.sparsify\(params, recipe, "
                                        r"opt_state\)"):
      pgf.sparsify(params, SR_STE, step)
  mdgf = pgf.Recipe("mdgf_exp", rules=((r"fc1/kernel", "1:4"),), total_steps=10)
  with pytest.raises(TypeError, match="MDGF's decayed gradient"):
    jax.jit(lambda s: pgf.sparsify(params, mdgf, s))(jnp.int32(3))
  for fine in (pgf.Recipe("ste", rules=((r"fc1/kernel", "1:4"),), total_steps=10),
               pgf.Recipe("sdgf_stepwise", rules=((r"fc1/kernel", "1:4"),), total_steps=10),
               dataclasses.replace(mdgf, gradient="ste")):
    pgf.sparsify(params, fine, 3)


def test_round2_the_right_order_trains_sr_ste_to_decay_pruned_weights():
  """What the wrong order did silently (pruned |W| grew): the refused chain is the one that
  trains wrong, the accepted one shrinks the pruned weights."""
  recipe = pgf.Recipe("sr_ste", rules=((r"fc1/kernel", "1:4"),), total_steps=30,
                      dense_fraction=0.0, finetune_fraction=0.0, sr_ste_lambda=0.5)
  pruned = lambda p: float(jnp.mean(jnp.abs(jnp.where(
      pgf.nm_mask(p["fc1"]["kernel"], 1, 4, 0), 0.0, p["fc1"]["kernel"]))))
  params, _ = run(recipe, pgf.optimizer(recipe, optax.adam(1e-2)), mlp_params(), 30)
  assert pruned(params) < 0.8 * pruned(mlp_params())  # Adam moves each weight <= lr a step
  with pytest.raises(ValueError, match="must be the first transform"):
    run(recipe, optax.chain(optax.adam(1e-2), pgf.gradient_flow(recipe)), mlp_params(), 1)


def test_round2_gradient_flow_update_refuses_a_state_of_another_recipe():
  params = mlp_params()
  state = pgf.gradient_flow(SR_STE).init(params)
  other = dataclasses.replace(SR_STE, total_steps=40)
  with pytest.raises(ValueError, match=r"recipe differs.*total_steps 40 vs 10"):
    pgf.gradient_flow(other).update(params, state, params)
  # Equal recipes built twice share one state type: jit caches and carries agree.
  assert type(pgf.gradient_flow(dataclasses.replace(SR_STE)).init(params)) is type(state)


def test_round2_finalize_and_compress_need_the_stored_masks():
  """Finding 2: finalize / target_masks / deploy.compress_params without the state (or masks)
  when mask_update_every > 1 is an error; with the state they deploy the trained masks."""
  from pgf import deploy
  recipe = pgf.Recipe("sdgf_stepwise", rules=((r"fc1/kernel", "1:4"),), total_steps=24,
                      dense_fraction=0.25, finetune_fraction=0.25, mask_update_every=5)
  params, opt_state = run(recipe, pgf.optimizer(recipe, optax.sgd(0.5)), mlp_params(), 24)
  for omit in (lambda: pgf.finalize(params, recipe), lambda: pgf.target_masks(params, recipe),
               lambda: deploy.compress_params(params, recipe),
               lambda: export_compress(params, recipe)):
    with pytest.raises(ValueError, match=r"mask_update_every=5.*opt_state"):
      omit()
  stored = pgf.masks_from_state(opt_state)["fc1/kernel"]
  want = jnp.where(stored, params["fc1"]["kernel"], 0.0)
  np.testing.assert_array_equal(pgf.finalize(params, recipe, opt_state)["fc1"]["kernel"], want)
  np.testing.assert_array_equal(
      deploy.compress_params(params, recipe, opt_state)["fc1"]["kernel"].dense(), want)
  np.testing.assert_array_equal(pgf.target_masks(params, recipe, opt_state)["fc1/kernel"],
                                stored)


def export_compress(params, recipe):
  from pgf.analysis import export
  return export.compress_params(params, recipe)


@pytest.mark.parametrize("change", [dict(rules=((r"fc1/kernel", "1:8"),)), dict(method="ste"),
                                    dict(total_steps=40), dict(sr_ste_lambda=0.1)],
                         ids=["nm", "method", "total_steps", "lambda"])
def test_round2_another_recipe_than_the_state_was_built_with(change):
  """Finding 3: the recipe is part of the state's static structure and compared at trace time
  by every reader."""
  params = mlp_params()
  opt_state = pgf.optimizer(SR_STE, optax.adam(1e-3)).init(params)
  other = dataclasses.replace(SR_STE, **change)
  field = next(iter(change))
  for read in (lambda: pgf.sparsify(params, other, opt_state),
               lambda: jax.jit(lambda s: pgf.sparsify(params, other, s))(opt_state),
               lambda: pgf.finalize(params, other, opt_state),
               lambda: pgf.step_from_state(opt_state, other)):
    with pytest.raises(ValueError, match=rf"recipe differs.*{field}"):
      read()


def test_round2_multisteps_micro_counter_is_never_the_step():
  """Finding 3: under MultiSteps the step is the gradient_flow count (real updates); passing
  the micro-step counter instead is refused for a method that shapes gradients."""
  params = mlp_params()
  tx = optax.MultiSteps(pgf.optimizer(SR_STE, optax.sgd(0.1)), every_k_schedule=4)
  opt_state = tx.init(params)
  update = jax.jit(lambda s: tx.update(jax.tree.map(jnp.ones_like, params), s, params)[1])
  for _ in range(7):
    opt_state = update(opt_state)
  assert int(opt_state.mini_step) == 3 and int(opt_state.gradient_step) == 1
  assert int(pgf.step_from_state(opt_state)) == 1
  with pytest.raises(TypeError, match="pass the optimizer state|Pass the optimizer state"):
    pgf.sparsify(params, SR_STE, opt_state.mini_step)
  got = pgf.sparsify(params, SR_STE, opt_state)
  want = pgf.sparsify(params, SR_STE, pgf.at_step(pgf.gradient_flow(SR_STE).init(params), 1))
  np.testing.assert_array_equal(got["fc1"]["kernel"], want["fc1"]["kernel"])


@pytest.mark.parametrize("shape,axis", [((2, 8, 16, 4), 2), ((2, 2, 2, 16, 4), 3)],
                         ids=["remat_scan_rank4", "rank5"])
def test_round2_axis_hint_is_the_input_axis_for_every_rank(shape, axis):
  """Finding 6: nn.remat_scan kernels (l1, l2, in, out) get the hint {'axis': 2}, which groups
  within each layer; the old hint {'axis': 1} grouped across layers."""
  recipe = pgf.Recipe("ste", rules=((r"k", "2:4"),), total_steps=10)
  w = jax.random.normal(jax.random.key(0), shape)
  with pytest.raises(ValueError) as info:
    pgf.finalize({"k": w}, recipe)
  assert f"{{'axis': {axis}}}" in str(info.value)
  hinted = pgf.Recipe("ste", rules=((r"k", "2:4", {"axis": axis}),), total_steps=10)
  deployed = jax.jit(lambda w: pgf.finalize({"k": w}, hinted)["k"])(w)
  deployed = deployed.reshape((-1,) + shape[-2:])
  per_layer = jax.jit(jax.vmap(lambda layer: pgf.nm_mask(layer, 2, 4, 0)))(
      w.reshape(deployed.shape))
  np.testing.assert_array_equal(deployed != 0, per_layer)  # every layer on its own


def test_round2_recipe_dict_typos_are_errors():
  """Finding 7."""
  base = SR_STE.to_dict()
  for typo, fix in (("axes", "axis"), ("alow_1d", "allow_1d")):
    data = json.loads(json.dumps(base))
    data["rules"][0][typo] = 1
    with pytest.raises(ValueError, match=rf"rules\[0\] has unknown keys \['{typo}' \(did you "
                                         rf"mean '{fix}'"):
      pgf.Recipe.from_dict(data)
  with pytest.raises(ValueError, match=r"to_dict\(\) form of a rule.*Recipe.from_dict"):
    pgf.Recipe(**base)
  with pytest.raises(ValueError, match=r"unknown rule options \['axes' \(did you mean 'axis'"):
    pgf.Recipe("ste", rules=((r"x", "1:4", {"axes": 1}),))


def test_round2_steps_beyond_int32_saturate_instead_of_wrapping():
  """Finding 8: uint32 / int64 / Python steps >= 2**31 are past the end (fine-tune), never
  wrapped into the dense phase; total_steps must fit int32."""
  recipe = pgf.Recipe("ste", rules=((r"fc1/kernel", "1:4"),), total_steps=100)
  params = mlp_params()
  want = pgf.sparsify(params, recipe, 99)["fc1"]["kernel"]
  for step in (2**31, np.uint32(2**31), np.int64(2**40), np.array(2**31, np.uint32),
               jnp.asarray(2**31, jnp.uint32)):
    np.testing.assert_array_equal(pgf.sparsify(params, recipe, step)["fc1"]["kernel"], want)
  traced = jax.jit(lambda s: pgf.sparsify(params, recipe, s))(jnp.asarray(2**31 + 5, jnp.uint32))
  np.testing.assert_array_equal(traced["fc1"]["kernel"], want)
  assert recipe.phase(2**31) == "finetune"
  with pytest.raises(ValueError, match="below 2\\*\\*31"):
    pgf.Recipe("ste", rules=((r"x", "1:4"),), total_steps=2**31)


def test_round2_traced_n_out_of_range_and_integer_kernels():
  """Finding 8: a traced n outside [0, m] raises when run (it was clamped silently); MDGF on
  an int8 kernel is refused (D(t) would truncate to 0)."""
  w = jax.random.normal(jax.random.key(0), (16, 4))
  masked = jax.jit(lambda n: pgf.nm_mask(w, n, 8, 0))
  assert int(masked(3).sum()) == 3 * 2 * 4
  for n in (12, -3):
    with pytest.raises(Exception, match=rf"need 0 <= n <= m, got traced n={n}, m=8"):
      jax.block_until_ready(masked(n))
  batched = jax.jit(jax.vmap(lambda n: pgf.nm_mask(w, n, 8, 0)))
  assert batched(jnp.array([1, 2])).shape == (2, 16, 4)
  with pytest.raises(Exception, match="got traced n=9"):
    jax.block_until_ready(batched(jnp.array([1, 9])))
  ints = {"fc1": {"kernel": jnp.ones((16, 8), jnp.int8)}}
  mdgf = pgf.Recipe("mdgf_exp", rules=((r"fc1/kernel", "1:4"),), total_steps=10,
                    gradient="ste")
  with pytest.raises(ValueError, match=r"fraction D\(t\).*\['fc1/kernel'\]"):
    pgf.sparsify(ints, mdgf, 3)
  # STE on int8 is exact (scale 0 or 1) and still allowed.
  ste = pgf.sparsify(ints, pgf.Recipe("ste", rules=((r"fc1/kernel", "1:4"),), total_steps=10),
                     3)
  assert ste["fc1"]["kernel"].dtype == jnp.int8


def test_round2_unclear_errors_now_say_what_to_do():
  """Finding 9 (core part): two gradient_flows, a state without the transform."""
  params = mlp_params()
  twice = optax.chain(pgf.gradient_flow(SR_STE), pgf.gradient_flow(SR_STE), optax.sgd(0.1))
  with pytest.raises(ValueError, match=r"found 2 pgf.gradient_flow states.*SR-STE's term "
                                       r"twice"):
    pgf.sparsify(params, SR_STE, twice.init(params))
  with pytest.raises(ValueError, match="found no pgf.gradient_flow state"):
    pgf.sparsify(params, SR_STE, optax.adam(1e-3).init(params))
  restored = {"opt_state": [{"count": jnp.int32(3)}, {}]}  # a target-less checkpoint restore
  with pytest.raises(ValueError, match="restored without a target"):
    pgf.step_from_state(restored)
  with pytest.raises(ValueError, match=r"axis must be an int or a tuple of ints, got 1.0"):
    pgf.nm_mask(jnp.ones((8, 4)), 2, 4, axis=1.0)
