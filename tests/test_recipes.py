"""Recipe validation and schedules: D(j) curves, SDGF stages, phase boundaries."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pgf
from pgf import Recipe, Rule

FF = (r".*/mlp/.*/kernel", "1:16")


def test_issue_example_constructs_with_defaults():
  recipe = Recipe(method="mdgf_exp", rules=(FF,), total_steps=10_000)
  assert recipe.rules == (Rule(r".*/mlp/.*/kernel", 1, 16, None, None),)
  assert recipe.dense_steps == 500 and recipe.finetune_start == 9000
  with pytest.raises(dataclasses_frozen_error()):
    recipe.total_steps = 5  # frozen


def dataclasses_frozen_error():
  import dataclasses
  return dataclasses.FrozenInstanceError


def test_dense_phase_clock_is_in_steps():
  """The authors' code divided the dense-phase clock by 100; ours ends exactly on time."""
  recipe = Recipe("ste", rules=(FF,), total_steps=1000, dense_fraction=0.1,
                  finetune_fraction=0.0)
  assert recipe.phase(99) == "dense" and recipe.phase(100) == "sparse"
  assert float(recipe.decay(99)) == 1.0 and float(recipe.decay(100)) == 0.0
  assert recipe.pattern(0, 99) == (16, 16) and recipe.pattern(0, 100) == (1, 16)
  mdgf = Recipe("mdgf_linear", rules=(FF,), total_steps=1000, dense_fraction=0.1,
                decay_coefficient=0.01)
  assert float(mdgf.decay(100)) == 1.0  # t = 0 at the first sparse step
  assert float(mdgf.decay(101)) == pytest.approx(0.99)


@pytest.mark.parametrize("method", ["mdgf_linear", "mdgf_exp", "mdgf_cosine"])
def test_default_decay_reaches_zero_near_70_percent(method):
  recipe = Recipe(method, rules=(FF,), total_steps=1000, dense_fraction=0.1,
                  finetune_fraction=0.2)
  steps = jnp.arange(1000)
  d = np.asarray(jax.vmap(recipe.decay)(steps))
  assert (d[:100] == 1.0).all() and d[100] == pytest.approx(1.0)
  assert (np.diff(d[100:800]) <= 1e-7).all(), "monotone non-increasing"
  assert d[700] == pytest.approx(1e-3 if method == "mdgf_exp" else 0.0, abs=1e-6)
  assert d[600] > 1e-3
  assert (d[800:] == 0.0).all(), "fine-tune phase is a hard mask"
  assert [recipe.phase(s) for s in (99, 100, 799, 800)] == [
      "dense", "decay", "decay", "finetune"]


def test_explicit_decay_coefficients():
  lin = Recipe("mdgf_linear", rules=(FF,), total_steps=100, dense_fraction=0.0,
               finetune_fraction=0.0, decay_coefficient=0.02)
  exp = Recipe("mdgf_exp", rules=(FF,), total_steps=100, dense_fraction=0.0,
               finetune_fraction=0.0, decay_coefficient=1e-2)
  cos = Recipe("mdgf_cosine", rules=(FF,), total_steps=100, dense_fraction=0.0,
               finetune_fraction=0.0, decay_coefficient=1 / 40)
  for t in (0, 10, 25, 50, 80):
    assert float(lin.decay(t)) == pytest.approx(max(1 - 0.02 * t, 0), abs=1e-6)
    assert float(exp.decay(t)) == pytest.approx(math.exp(-0.01 * t), rel=1e-5)
    assert float(cos.decay(t)) == pytest.approx(0.5 * (1 + math.cos(math.pi * min(t / 40, 1))),
                                                abs=1e-6)
  assert lin.beta == 0.02


def test_decay_traced_equals_python():
  recipe = Recipe("mdgf_exp", rules=(FF,), total_steps=300)
  jitted = jax.jit(recipe.decay)
  for s in (0, 14, 15, 16, 100, 269, 270, 299, 400):
    assert float(jitted(jnp.int32(s))) == float(recipe.decay(s))


def test_sdgf_stepwise_stages_and_boundaries():
  recipe = Recipe("sdgf_stepwise", rules=(FF, (r".*/attn/.*", "1:4")), total_steps=100,
                  dense_fraction=0.1, finetune_fraction=0.1)
  assert recipe.stages(0) == ((15, 16), (8, 16), (4, 16), (2, 16), (1, 16))
  assert recipe.stages(1) == ((3, 4), (2, 4), (1, 4))
  # 80 middle steps in 5 equal stages of 16 for the FF rule.
  expected = {9: (16, 16), 10: (15, 16), 25: (15, 16), 26: (8, 16), 41: (8, 16), 42: (4, 16),
              58: (2, 16), 73: (2, 16), 74: (1, 16), 89: (1, 16), 90: (1, 16), 150: (1, 16)}
  for step, nm in expected.items():
    assert recipe.pattern(0, step) == nm, step
  # The QKV rule has its own (3 stage) intervals in the same recipe.
  assert [recipe.pattern(1, s) for s in (10, 36, 37, 63, 64)] == [
      (3, 4), (3, 4), (2, 4), (2, 4), (1, 4)]
  jitted = jax.jit(lambda s: recipe.stage_index(0, s))
  for s in range(0, 100):
    assert int(jitted(jnp.int32(s))) == int(recipe.stage_index(0, s))


@pytest.mark.parametrize("target,stages", [
    ("2:4", ((3, 4), (2, 4))),
    ("1:8", ((7, 8), (4, 8), (2, 8), (1, 8))),
    ("3:8", ((7, 8), (4, 8), (3, 8))),
    ("7:8", ((7, 8),)),
    ("1:128", ((127, 128), (64, 128), (32, 128), (16, 128), (8, 128), (4, 128), (2, 128),
               (1, 128))),
])
def test_sdgf_stepwise_stage_lists(target, stages):
  recipe = Recipe("sdgf_stepwise", rules=((".*", target),), total_steps=100)
  assert recipe.stages(0) == stages


def test_sdgf_geometric_matches_paper_example():
  recipe = Recipe("sdgf_geometric", rules=((".*", "1:8"),), total_steps=100, sdgf_k=16)
  assert recipe.stages(0) == ((16, 128), (8, 64), (4, 32), (2, 16), (1, 8))
  assert Recipe("sdgf_geometric", rules=((".*", "2:4"),), total_steps=10).stages(0) == (
      (16, 32), (8, 16), (4, 8), (2, 4))  # default k = 8 (the released code)


def test_custom_stages_and_combined_method():
  recipe = Recipe("mdgf_exp+sdgf_custom",
                  rules=((r"ff", "1:16"), (r"qk", "1:4", {"axis": 1, "stages": ("2:4", "1:4")})),
                  sdgf_stages=("8:16", "4:16", "1:16"), total_steps=100, dense_fraction=0.0,
                  finetune_fraction=0.1)
  assert recipe.mdgf == "mdgf_exp" and recipe.sdgf == "sdgf_custom"
  assert recipe.stages(0) == ((8, 16), (4, 16), (1, 16))
  assert recipe.stages(1) == ((2, 4), (1, 4)) and recipe.rules[1].axis == 1
  sched = recipe.schedule(50)
  assert sched["phase"] == "decay" and sched["patterns"] == {"ff": "4:16", "qk": "1:4"}
  assert 0 < sched["decay"] < 1
  assert sched["densities"]["ff"] == pytest.approx(4 / 16 + sched["decay"] * 12 / 16)
  assert recipe.schedule(95)["decay"] == 0.0


def test_schedule_for_logging():
  recipe = Recipe("mdgf_exp", rules=(FF,), total_steps=1000)
  s = recipe.schedule(0)
  assert s == {"step": 0, "phase": "dense", "decay": 1.0,
               "patterns": {FF[0]: "16:16"}, "densities": {FF[0]: 1.0}}
  assert recipe.schedule(999)["patterns"] == {FF[0]: "1:16"}
  import json
  json.dumps(recipe.to_dict())


@pytest.mark.parametrize("kwargs,fragments", [
    (dict(method="mdgf_expo"), ["method='mdgf_expo'"]),
    (dict(method="sdgf_stepwise+mdgf_exp"), ["method='sdgf_stepwise+mdgf_exp'"]),
    (dict(rules=((r".*", "5:4"),)), ["rules[0]", "1 <= N <= M", "5:4"]),
    (dict(rules=((r".*", "0:4"),)), ["rules[0]", "0:4"]),
    (dict(rules=((r".*", "1:0"),)), ["rules[0]", "M must be >= 1"]),
    (dict(rules=((r".*", "1-4"),)), ["rules[0]", "'1:16'"]),
    (dict(rules=((r"(", "1:4"),)), ["rules[0]", "invalid regex"]),
    (dict(rules=((r".*", "1:4", {"axes": 1}),)), ["unknown rule options"]),
    (dict(rules=((r".*", "1:4", 1.5),)), ["axis=1.5"]),
    (dict(rules="ff"), ["rules='ff'"]),
    (dict(rules=()), ["rules=()"]),
    (dict(total_steps=0), ["total_steps=0"]),
    (dict(total_steps=-5), ["total_steps=-5"]),
    (dict(dense_fraction=1.5), ["dense_fraction=1.5", "[0, 1]"]),
    (dict(finetune_fraction=-0.1), ["finetune_fraction=-0.1"]),
    (dict(dense_fraction=0.6, finetune_fraction=0.6), ["must not exceed 1"]),
    (dict(dense_fraction=0.5, finetune_fraction=0.5), ["at least one step between"]),
    (dict(gradient="soft"), ["gradient='soft'"]),
    (dict(decay_coefficient=-1.0), ["decay_coefficient=-1.0"]),
    (dict(decay_end_fraction=0.0), ["decay_end_fraction=0.0"]),
    (dict(decay_end_fraction=0.04), ["decay_end_fraction=0.04", "after the dense phase"]),
    (dict(sr_ste_lambda=-1.0), ["sr_ste_lambda=-1.0"]),
    (dict(mask_update_every=0), ["mask_update_every=0"]),
    (dict(sdgf_k=6), ["sdgf_k=6", "power of two"]),
    (dict(method="sdgf_custom"), ["sdgf_stages=None"]),
    (dict(method="sdgf_custom", sdgf_stages=("4:16", "2:16")), ["must equal the rule's target"]),
    (dict(sdgf_stages=("4:16", "1:16")), ["only used by 'sdgf_custom'"]),
    (dict(rules=((r".*", "1:16", {"stages": ("2:16", "1:16")}),)), ["need method 'sdgf_custom'"]),
])
def test_invalid_recipe_names_the_field(kwargs, fragments):
  base = dict(method="mdgf_exp", rules=(FF,), total_steps=100)
  base.update(kwargs)
  with pytest.raises(ValueError) as info:
    Recipe(**base)
  message = str(info.value)
  for fragment in fragments:
    assert fragment in message, (fragment, message)


def test_all_problems_reported_at_once():
  with pytest.raises(ValueError) as info:
    Recipe("nope", rules=((r".*", "9:8"),), total_steps=0, dense_fraction=2.0, sdgf_k=3)
  message = str(info.value)
  for fragment in ("method='nope'", "9:8", "total_steps=0", "dense_fraction=2.0", "sdgf_k=3"):
    assert fragment in message


def test_dense_method_needs_no_rules():
  recipe = Recipe("dense", total_steps=10)
  assert recipe.schedule(5) == {"step": 5, "phase": "dense", "decay": 1.0, "patterns": {},
                                "densities": {}}
  params = {"w": jnp.ones((4, 4))}
  assert pgf.sparsify(params, recipe, 3) is params
