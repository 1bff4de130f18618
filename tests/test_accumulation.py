"""Gradient accumulation (config.micro_batches): k micro-batches then one update is the
full-batch step, with the full batch's step counting."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pgf
from pgf.train import config_lib
from pgf.train import sharding as sharding_lib
from pgf.train import loop as train
from test_train_vit import ROOT, load_config, tiny_vit


def _steps(config, micro_batches):
  task, recipe, total_steps = train.preflight(config)
  tx, schedule = train.build_optimizer(config, recipe, total_steps, 0)
  mesh = sharding_lib.build_mesh(config.get("mesh"))
  init_state = train._init_state_fn(task, recipe, tx, 0)
  shardings = sharding_lib.tree_shardings(jax.eval_shape(init_state, jax.random.key(0)), mesh,
                                          sharding_lib.rules_of(config))
  fns = train._compile_steps(task, recipe, tx, schedule, mesh, shardings, 0,
                             jax.random.key(1), micro_batches)
  return task, init_state(jax.random.key(0)), fns


def test_accumulated_step_equals_full_batch_step():
  config = tiny_vit(load_config(os.path.join(ROOT, "configs", "vit_1_16.py"), "demo"))
  config.model.update(dropout=0.0, drop_path=0.0)
  config.update(batch_size=8, total_steps=4)
  config.sparsity.update(method="mdgf_exp")
  results = {}
  for k in (1, 4):
    task, state, fns = _steps(config, k)
    batch = task.train_source.train_batch(0)
    for _ in range(2):
      state, metrics = fns.train_step(state, batch)
    results[k] = (jax.device_get(state), jax.device_get(metrics))
  (full, m1), (acc, m4) = results[1], results[4]
  assert int(acc["step"]) == int(full["step"]) == 2
  assert int(pgf.step_from_state(acc["opt_state"])) == int(pgf.step_from_state(full["opt_state"]))
  for a, b in zip(jax.tree.leaves(full["params"]), jax.tree.leaves(acc["params"])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
  np.testing.assert_allclose(m1["accuracy"], m4["accuracy"], rtol=1e-6)


def test_micro_batches_must_divide_the_batch():
  config = tiny_vit(load_config(os.path.join(ROOT, "configs", "vit_1_16.py"), "demo"))
  config.update(batch_size=8, micro_batches=3)
  with pytest.raises(ValueError, match="config.micro_batches=3 does not divide "
                                       "config.batch_size=8"):
    config_lib.validate(config)
  config.update(micro_batches=0)
  with pytest.raises(ValueError, match="config.micro_batches=0: must be an int >= 1"):
    config_lib.validate(config)


def test_paper_config_sizes_micro_batches_per_chip_and_refuses_a_second_count():
  """The ViT/SwinV2 paper configs ship `device_micro_batch`; a count given on top of it
  (`--config.micro_batches=4`, as the search once printed) is refused, not ignored."""
  config = load_config(os.path.join(ROOT, "configs", "vit_1_16.py"))
  assert config.device_micro_batch == 128 and config.micro_batches == 1
  config_lib.validate(config)
  with config.unlocked():
    config.micro_batches = 4
  with pytest.raises(ValueError, match="config.micro_batches=4 and config.device_micro_batch=128 "
                                       "both set the gradient-accumulation count"):
    config_lib.validate(config)
  with config.unlocked():
    config.device_micro_batch = 0
  config_lib.validate(config)


def test_device_micro_batch_scales_with_the_slice():
  config = load_config(os.path.join(ROOT, "configs", "vit_1_16.py"))  # batch 4096
  with config.unlocked():
    config.device_micro_batch = 128
  devices = [jax.devices()[0]] * 1
  mesh = sharding_lib.build_mesh(config.get("mesh"), devices=devices)
  assert train.micro_batches_of(config, mesh) == 32          # 4096 on one device
  for chips, want in ((4, 8), (16, 2), (32, 1), (64, 1)):
    sizes = {"data": chips, "fsdp": 1, "model": 1}
    fake = type("Mesh", (), {"shape": sizes})()
    assert train.micro_batches_of(config, fake) == want
  # "At most": a bound that does not divide the per-device batch takes the next count that
  # splits it evenly (1024 per chip, at most 96: 11 would not divide, 16 of 64 do).
  config.device_micro_batch = 96
  assert train.micro_batches_of(config, type("Mesh", (), {"shape": {"data": 4, "fsdp": 1}})()) == 16
  assert not sharding_lib.config_problems(config, device_count=4)
  assert [train.fewest_micro_batches(n, e) for n, e in
          ((1000, 128), (192, 128), (128, 128), (100, 128), (131, 64))] == [8, 2, 1, 1, 131]
