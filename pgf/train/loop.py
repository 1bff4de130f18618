"""`train_and_evaluate(config, workdir)`: the one train loop for every model and method.

Resume order (big_vision style): (1) the newest complete checkpoint in `workdir`, (2) else the
params of `config.init_from` (a dense pre-training workdir, for sparse fine-tuning), (3) else a
fresh init from `config.seed`. Everything that changes from step to step -- data, dropout RNG,
learning rate, D(j), the SDGF pattern -- is a pure function of (seed, step), so a run killed at
any step and restarted with the same command finishes with bit-identical parameters.

The state lives on the device mesh of `config.mesh`, placed by `config.sharding_rules`
(pgf/train/sharding.py): it is created sharded, restored with this mesh's shardings whatever mesh wrote
the checkpoint, and every process feeds its own slice of each batch.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pgf
from pgf.train import config_lib
from pgf.train import multihost
from pgf.train.config_lib import build_recipe  # noqa: F401  (re-exported: tests and tools use it)
from pgf.train import sharding as sharding_lib
from pgf.train.checkpointing import Checkpointer
from pgf.train.metric_writer import MetricWriter
from pgf.data import mixup as mixup_lib
from pgf.train.tasks import Task, build_task, num_train_examples

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
  """Loss or gradients became NaN/Inf; the last good checkpoint is left intact."""


# ----------------------------------------------------------------------------- building blocks
def total_steps_of(config, task: Task) -> int:
  if config.get("total_steps", -1) and config.total_steps > 0:
    return int(config.total_steps)
  return int(math.ceil(config.total_epochs * num_train_examples(task) / config.batch_size))


def steps_of(config, task: Task, steps_key: str, epochs_key: str) -> int:
  """A step count given in the config either as steps or as epochs."""
  steps = config.optim.get(steps_key, -1)
  if steps is not None and steps >= 0:
    return int(steps)
  epochs = config.optim.get(epochs_key, 0.0) or 0.0
  return int(round(epochs * num_train_examples(task) / config.batch_size))


def learning_rate(config) -> float:
  """Peak lr: `optim.lr` is given at `optim.reference_batch` and scaled linearly with the
  global batch actually used (the paper's 1e-3 is at 4096 = 256 x 16 GPUs)."""
  reference = config.optim.get("reference_batch", 0) or config.batch_size
  return config.optim.lr * config.batch_size / reference


def rsqrt_schedule(constant: float, warmup_steps: int) -> optax.Schedule:
  """Mesh-TF / T5X "constant * linear_warmup * rsqrt_decay": the WMT recipe's schedule.

    lr(step) = constant * min(1, step / warmup_steps) / sqrt(max(step, warmup_steps))

  `constant` is the printed learning rate (the paper's WMT 0.0625), not the peak: the peak is
  constant / sqrt(warmup_steps), reached at the end of the warm-up (0.0625 / sqrt(1000) = 1.98e-3),
  then the rate decays as 1 / sqrt(step).
  """
  warmup = max(int(warmup_steps), 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    return constant * jnp.minimum(1.0, step / warmup) / jnp.sqrt(jnp.maximum(step, warmup))

  return schedule


def build_optimizer(config, recipe: pgf.Recipe, total_steps: int, warmup_steps: int):
  peak = learning_rate(config)
  if config.optim.schedule == "rsqrt":
    # Not clamped to the run's length: warmup_steps also sets the scale (peak = lr / sqrt(warmup)).
    schedule = rsqrt_schedule(peak, warmup_steps)
  # Short runs (tests, smoke runs) keep at least one step of the main schedule.
  warmup_steps = max(min(warmup_steps, total_steps - 1), 0)
  if config.optim.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, peak, max(warmup_steps, 0), total_steps, end_value=config.optim.get("min_lr", 0.0))
  elif config.optim.schedule == "constant":
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup_steps, 1)), optax.constant_schedule(peak)],
        [warmup_steps])
  elif config.optim.schedule != "rsqrt":
    raise ValueError(f"config.optim.schedule={config.optim.schedule!r}: 'cosine', 'constant' "
                     "or 'rsqrt'")
  # Weight decay on matrices only (not biases, norms, position embeddings' 1-d leaves).
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  parts = []
  if config.optim.get("grad_clip"):
    parts.append(optax.clip_by_global_norm(config.optim.grad_clip))
  parts.append(optax.adamw(schedule, b1=config.optim.b1, b2=config.optim.b2,
                           weight_decay=config.optim.weight_decay, mask=decay_mask))
  return pgf.optimizer(recipe, *parts), schedule


def matched_sparsity(params, recipe: pgf.Recipe, opt_state, step=None):
  """Fraction of exact zeros among the sparsified weights (what the model really sees) at the
  optimizer state's step, or at `step` (e.g. the step just trained)."""
  if step is not None:
    opt_state = pgf.at_step(opt_state, step)
  effective = pgf.sparsify(params, recipe, opt_state)
  matched = pgf.match_leaves(params, recipe)
  zeros, total = 0.0, 0
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(effective)[0]:
    if _path(key_path) in matched:
      zeros = zeros + jnp.sum(leaf == 0).astype(jnp.float32)
      total += leaf.size
  return zeros / max(total, 1)


def _path(key_path) -> str:
  from pgf.sparsify import leaf_path  # pylint: disable=g-import-not-at-top
  return leaf_path(key_path)


def preflight(config, process_index: int = 0, process_count: int = 1,
              device_count: int | None = None):
  """(task, recipe, total_steps), or one ValueError listing every problem, before compiling.

  Config fields, the dataset (missing or unprepared) and the fit of the sparsity rules to the
  model's parameters (a rule matching nothing, an M that does not divide a matched kernel's
  grouped axis) are all checked, so a user fixes everything in one go.
  """
  problems = config_lib.validate(config, process_count=process_count,
                                 device_count=device_count or jax.device_count(),
                                 raise_errors=False)
  task = recipe = total_steps = None
  if not any(p.startswith(("config.data", "config.model", "config.batch_size"))
             for p in problems):
    try:
      task = build_task(config, process_index, process_count)
    except ValueError as e:  # DatasetNotFoundError is one
      problems.append(f"config.data.name={config.data.get('name')!r}: {e}")
  if task is not None and not any(p.startswith("config.sparsity") for p in problems):
    total_steps = total_steps_of(config, task)
    try:
      recipe = build_recipe(config, total_steps)
      abstract_params = task.params_shape()
      # SDGF-geometric's first stage k*N:k*M must divide each kernel: lower k per rule if not.
      recipe, notes = pgf.fit_sdgf_k(abstract_params, recipe)
      for note in notes:
        log.info("config.sparsity.sdgf_k=%d does not fit: %s", config.sparsity.sdgf_k, note)
      pgf.check_params(abstract_params, recipe)
    except ValueError as e:
      problems.extend(f"config.sparsity.rules: {line.strip(' -')}"
                      for line in str(e).splitlines()[1:])
  if problems:
    raise ValueError("Invalid config:\n  - " + "\n  - ".join(problems))
  return task, recipe, total_steps


# ----------------------------------------------------------------------------- the loop
def train_and_evaluate(config, workdir: str, stop: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the summary.

  A SIGTERM (preemption notice) stops the run after the next step, with a checkpoint there,
  and `summary["preempted"]` set. It is caught from the start: while compiling or restoring
  too, where, in a multi-process job, JAX's own handler would otherwise swallow it. `stop` is
  the caller's {"signal": None} when it caught signals before (pgf.main does, from before the
  processes connect); a signal recorded there counts like one received here.
  """
  stop = {"signal": None} if stop is None else stop

  def on_sigterm(signum, _frame):
    stop["signal"] = signum

  previous_handler = _install(signal.SIGTERM, on_sigterm)
  try:
    return _train_and_evaluate(config, workdir, stop)
  finally:
    _install(signal.SIGTERM, previous_handler)


def _train_and_evaluate(config, workdir: str, stop: dict[str, Any]) -> dict[str, Any]:
  if "://" in workdir:  # os.path would turn gs://b/run into a local ./gs:/b/run
    raise ValueError(f"--workdir={workdir!r}: pgf reads and writes the workdir as a local path; "
                     "mount the bucket with Cloud Storage FUSE on every host and pass the mount "
                     "path, e.g. /gcs/BUCKET/run (docs/cloud_tpu.md)")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  process_index, process_count = jax.process_index(), jax.process_count()
  is_main = process_index == 0
  task, recipe, total_steps = preflight(config, process_index, process_count)
  warmup_steps = steps_of(config, task, "warmup_steps", "warmup_epochs")
  rng = jax.random.key(config.seed)
  abstract_params = task.params_shape()
  tx, lr_schedule = build_optimizer(config, recipe, total_steps, warmup_steps)
  mesh = sharding_lib.build_mesh(config.get("mesh"))

  writer = MetricWriter(workdir, enabled=is_main)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, "recipe.json"), "w") as f:
      json.dump(recipe.to_dict(), f, indent=2)
    log.info("Sparsity rules:\n%s", _match_summary(abstract_params, recipe))

  noise_every = config.get("noise_every", 0) if recipe.rules else 0
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints,
                              async_save=config.get("async_checkpointing", True))
  state, resumed_from, state_shardings = _build_state(config, task, recipe, tx, mesh, rng,
                                                      checkpointer, noise_every, is_main)
  # Rows logged after the step this run starts from are logged again: drop them (all of them
  # when no checkpoint was complete and the run starts from step 0).
  writer.truncate_after(resumed_from if resumed_from is not None else 0)
  start_step = int(state["step"])
  micro_batches = micro_batches_of(config, mesh)
  if micro_batches > 1 and is_main:
    log.info("Gradient accumulation: %d micro-batches of %d examples per step", micro_batches,
             config.batch_size // micro_batches)
  fns = _compile_steps(task, recipe, tx, lr_schedule, mesh, state_shardings, noise_every,
                       jax.random.fold_in(rng, 1), micro_batches)
  evaluate = functools.partial(_evaluate, task, fns, mesh)

  pending: list[tuple[int, dict]] = []
  summary: dict[str, Any] = {"workdir": workdir, "total_steps": total_steps,
                             "resumed_from": resumed_from, "method": recipe.method}
  t_start = time.time()
  t_last, step_last = time.time(), start_step
  local_batch = None
  # Batches are a pure function of (seed, step): the iterator (input worker processes for the
  # TFDS sources) starts at the resumed step and yields what train_batch(step) would.
  batches = None
  try:
    batches = task.train_source.train_batches(start_step)
    step = start_step
    while step < total_steps:
      batch = next(batches)
      local_batch = local_batch or len(batch[task.examples_key])
      # A SIGTERM reaches one process; all must stop after the same step. Every process votes
      # its flag before dispatching the step and reads the max after: the read waits for the
      # previous step only, so the device never idles. A signal arriving after the vote
      # (during eval, logging, a save) is carried by the next step's vote.
      stop_vote = multihost.start_max(stop["signal"] is not None, "stop after this step", step)
      state, metrics = fns.train_step(state, sharding_lib.global_batch(batch,
                                                                       fns.batch_sharding))
      pending.append((step, metrics))
      if noise_every and step % noise_every == 0 and is_main:
        writer.write(step + 1, "noise", jax.device_get(metrics["noise"]))
      step += 1
      last = step == total_steps
      stopping = bool(stop_vote.result()) and not last  # the same on every process
      log_now = step % config.log_every == 0 or last
      save_now = (step % config.checkpoint_every == 0) or last or stopping
      if log_now or save_now:
        _check_finite(pending, checkpointer)
      if log_now:
        # Jitted on global arrays, so every process computes it; only process 0 writes.
        sparsity = float(fns.sparsity(state["params"], state["opt_state"], jnp.int32(step - 1)))
        now = time.time()
        rate = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        line = _log_line(step, total_steps, pending[-1][1], recipe, rate,
                         rate * local_batch * process_count, sparsity)
        writer.write(step, "train", line)
        if is_main:
          log.info(_format(line))
        pending.clear()
      if last or (config.eval_every and step % config.eval_every == 0):
        eval_metrics = evaluate(state)
        writer.write(step, "eval", eval_metrics)
        if is_main:
          log.info("[eval %d/%d] %s", step, total_steps,
                   " ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
        summary.update(eval_metrics)
      if save_now:
        checkpointer.save(step, state)
      if stopping:
        checkpointer.wait()
        writer.flush()
        log.warning("Received signal %s%s: saved a checkpoint at step %d and stopped; rerun "
                    "the same command to resume.", stop["signal"] or "SIGTERM",
                    "" if stop["signal"] else " on another process", step)
        summary.update(preempted=True, stopped_at=step)
        return summary
    checkpointer.wait()
  finally:
    close = getattr(batches, "close", None)
    if close is not None:
      close()
    checkpointer.close()
    writer.flush()
    writer.close()

  summary.update(
      preempted=False, final_step=int(state["step"]), train_seconds=time.time() - t_start,
      final_schedule=recipe.schedule(total_steps - 1), lr_peak=learning_rate(config))
  if is_main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2, default=str)
  summary["state"] = state
  return summary


# ----------------------------------------------------------------------------- the parts
def _init_state_fn(task: Task, recipe: pgf.Recipe, tx, noise_every: int):
  """rng -> the train state of a fresh run (step, params, opt_state, ...)."""
  def init_state(rng):
    params = task.init_fn(rng)
    state = {"step": jnp.zeros([], jnp.int32), "params": params, "opt_state": tx.init(params)}
    if task.init_model_state is not None:  # e.g. BatchNorm statistics, checkpointed with it
      state["model_state"] = task.init_model_state(rng)
    if noise_every:
      # Gradient-noise statistics (paper §4): the masks of the previous measurement live in
      # the state so mask flips are counted exactly across a resume.
      state["noise_masks"] = pgf.current_masks(params, recipe, 0)
    return state

  return init_state


def _build_state(config, task: Task, recipe: pgf.Recipe, tx, mesh, rng, checkpointer,
                 noise_every: int, is_main: bool):
  """(state, resumed_from, state_shardings): the newest checkpoint, else init_from's params,
  else a fresh init, laid out for this mesh."""
  init_state = _init_state_fn(task, recipe, tx, noise_every)
  abstract_state = jax.eval_shape(init_state, rng)
  # The restore target carries this mesh's shardings, so a checkpoint written on any mesh (8
  # devices, 1 device, another slice) comes back laid out for this one.
  state_shardings = sharding_lib.tree_shardings(abstract_state, mesh,
                                                sharding_lib.rules_of(config))
  abstract_state = sharding_lib.with_shardings(abstract_state, state_shardings)
  if is_main:
    log.info("Mesh %s, %s axes; state shardings:\n%s", dict(mesh.shape),
             mesh.axis_types[0].name, sharding_lib.describe(state_shardings))
  state, resumed_from = checkpointer.restore_latest(abstract_state)
  if state is None:
    state = sharding_lib.jit(init_state, mesh, out_shardings=state_shardings)(rng)
    if config.get("init_from"):
      state = _init_params_from(config.init_from, state, abstract_state, tx)
      if noise_every:  # the previous-masks slot starts from the loaded weights
        state["noise_masks"] = pgf.current_masks(state["params"], recipe, 0)
      state = jax.device_put(state, state_shardings)
      log.info("Initialised params from %s", config.init_from)
  else:
    log.info("Resumed from checkpoint at step %d", resumed_from)
  return state, resumed_from, state_shardings


class StepFns(NamedTuple):
  """The jitted computations of a run, each on global arrays (every process runs each)."""
  train_step: Any       # (state, batch) -> (state, metrics)
  eval_step: Any        # (params, batch, model_state, sums) -> sums + {metric: batch sum}
  effective: Any        # (params, opt_state, step) -> the forward weights of that step
  deployed: Any         # (params, opt_state) -> finalized params (the trained masks)
  sparsity: Any         # (params, opt_state, step) -> measured fraction of zeros
  batch_sharding: Any
  eval_rows: int        # eval batches are padded to a multiple of this
  eval_shapes: Any      # (params, batch, model_state) -> shapes and dtypes of the eval sums
  replicated: Any       # the sharding of the eval sums


def micro_batches_of(config, mesh) -> int:
  """Gradient-accumulation micro-batches per step: `config.micro_batches`, or, when
  `config.device_micro_batch` > 0, the fewest that keep each data-parallel device at no more
  than that many examples per micro-batch (so one config fits slices of any size: 4096 images
  with at most 128 per chip accumulate 8 micro-batches on a v4-8, 2 on a v4-32, none on a v4-64)."""
  per_micro = config.get("device_micro_batch", 0) or 0
  if per_micro <= 0:
    return config.get("micro_batches", 1)
  return fewest_micro_batches(config.batch_size // sharding_lib.batch_shard_count(mesh),
                              per_micro)


def fewest_micro_batches(per_device: int, at_most: int) -> int:
  """The smallest k that divides `per_device` examples into k equal micro-batches of at most
  `at_most` each (1000 examples, at most 128: 8 of 125)."""
  k = max(1, -(-per_device // at_most))
  while per_device % k:
    k += 1
  return k


def _micro_batches(batch, k: int, mesh):
  """(k, B / k, ...) per leaf: micro-batch j holds rows j, j + k, j + 2k, ... so that every
  device keeps its own rows (each micro-batch is split over the devices like the batch)."""
  def split(x):
    shape = (x.shape[0] // k, k) + x.shape[1:]
    if sharding_lib.is_explicit(mesh):
      spec = jax.sharding.PartitionSpec(sharding_lib.BATCH_AXES)
      x = jnp.reshape(x, shape, out_sharding=spec)
    else:
      x = x.reshape(shape)
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def _compile_steps(task: Task, recipe: pgf.Recipe, tx, lr_schedule, mesh, state_shardings,
                   noise_every: int, train_rng, micro_batches: int = 1) -> StepFns:
  stateful = task.init_model_state is not None
  if stateful:  # loss_fn returns (loss, (metrics, new model state))
    model_loss = sharding_lib.auto_model(
        lambda p, b, r, s: task.loss_fn(p, b, r, True, model_state=s), mesh)
  else:
    model_loss = sharding_lib.auto_model(lambda p, b, r: task.loss_fn(p, b, r, True), mesh)
  if noise_every:
    from pgf.analysis import noise as noise_lib  # pylint: disable=g-import-not-at-top

  def loss_and_grads(state, batch, rng, model_state):
    step = state["step"]

    def loss_fn(params):
      effective = pgf.sparsify(params, recipe, state["opt_state"])
      if stateful:
        return model_loss(effective, batch, rng, model_state)
      return model_loss(effective, batch, rng)

    # Mixing partners from the same device's part of the batch: no image crosses devices.
    with mixup_lib.partner_shards(sharding_lib.batch_shard_count(mesh)):
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    metrics, model_state = aux if stateful else (aux, None)
    return loss, metrics, model_state, grads

  def train_step(state, batch):
    step = state["step"]
    step_rng = jax.random.fold_in(train_rng, step)
    if micro_batches == 1:
      loss, metrics, model_state, grads = loss_and_grads(state, batch, step_rng,
                                                         state.get("model_state"))
    else:
      # Gradient accumulation: the mean over k micro-batches of their mean-loss gradients is
      # the full batch's gradient (equal-size micro-batches), then ONE optimizer update, so
      # the step count, the schedules and pgf.step_from_state are those of the full batch.
      def body(carry, xs):
        grads_sum, loss_sum, metrics_sum, model_state = carry
        micro, j = xs
        loss, metrics, model_state, grads = loss_and_grads(
            state, micro, jax.random.fold_in(step_rng, j), model_state)
        add = lambda a, b: jax.tree.map(jnp.add, a, b)
        return (add(grads_sum, grads), loss_sum + loss, add(metrics_sum, metrics),
                model_state), None

      micro = _micro_batches(batch, micro_batches, mesh)
      first = jax.tree.map(lambda x: x[0], micro)
      metric_shapes = jax.eval_shape(lambda: loss_and_grads(state, first, step_rng,
                                                            state.get("model_state"))[1])
      # Accumulators laid out like the params (zeros_like keeps their sharding).
      init = (jax.tree.map(jnp.zeros_like, state["params"]), jnp.zeros((), jnp.float32),
              jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), metric_shapes),
              state.get("model_state"))
      (grads, loss, metrics, model_state), _ = jax.lax.scan(
          body, init, (micro, jnp.arange(micro_batches)))
      scale = 1.0 / micro_batches
      grads = jax.tree.map(lambda g: g * scale, grads)
      loss, metrics = loss * scale, jax.tree.map(lambda m: m * scale, metrics)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, learning_rate=lr_schedule(step),
                   finite_loss=jnp.isfinite(loss), finite_grads=jnp.isfinite(grad_norm))
    new_state = {"step": step + 1, "params": params, "opt_state": opt_state}
    if stateful:
      new_state["model_state"] = model_state
    if noise_every:
      measure = lambda: noise_lib.noise_stats(state["params"], grads, opt_state, recipe, step,
                                              state["noise_masks"])
      skip = lambda: (jax.tree.map(jnp.zeros_like, jax.eval_shape(measure)[0]),
                      state["noise_masks"])
      metrics["noise"], new_state["noise_masks"] = jax.lax.cond(
          step % noise_every == 0, measure, skip)
    return new_state, metrics

  # Eval reads the running model state (BatchNorm averages); {} for a stateless task.
  model_eval = ((lambda p, b, s: task.eval_fn(p, b, model_state=s)) if stateful
                else (lambda p, b, s: task.eval_fn(p, b)))
  model_eval = sharding_lib.auto_model(model_eval, mesh)

  def eval_step(params, batch, model_state, sums):
    # The running sums go in and out, so each eval step depends on the previous one: see
    # `_evaluate` for why the steps must not be independent programs.
    return jax.tree.map(jnp.add, sums, model_eval(params, batch, model_state))

  def eval_shapes(params, batch, model_state):
    if not sharding_lib.is_explicit(mesh):
      return jax.eval_shape(model_eval, params, batch, model_state)
    with jax.set_mesh(mesh):
      return jax.eval_shape(model_eval, params, batch, model_state)

  batch_sharding, replicated = sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)
  param_shardings = state_shardings["params"]
  jit = functools.partial(sharding_lib.jit, mesh=mesh)
  return StepFns(
      train_step=jit(train_step, in_shardings=(state_shardings, batch_sharding),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,)),
      eval_step=jit(eval_step, in_shardings=(param_shardings, batch_sharding,
                                             state_shardings.get("model_state", {}), replicated),
                    out_shardings=replicated),
      effective=jit(lambda params, opt_state, step: pgf.sparsify(
          params, recipe, pgf.at_step(opt_state, step)), out_shardings=param_shardings),
      # Deployed = the masks the forward pass used (stored ones when mask_update_every > 1).
      deployed=jit(lambda params, opt_state: pgf.finalize(params, recipe, opt_state),
                   out_shardings=param_shardings),
      sparsity=jit(lambda params, opt_state, step: matched_sparsity(
          params, recipe, opt_state, step), out_shardings=replicated),
      batch_sharding=batch_sharding, eval_rows=sharding_lib.local_multiple(mesh),
      eval_shapes=eval_shapes, replicated=replicated)


def _evaluate(task: Task, fns: StepFns, mesh, state) -> dict[str, float]:
  """Eval metrics of the current forward weights and of the deployed (finalized) model.

  Every eval step takes the running sums of the previous one and returns them updated, so the
  steps form one chain of dependent programs. They used to be independent programs (each batch's
  sums, added up by separate `jnp.add`s): with many batches, dozens of programs that each end
  in a cross-process all-reduce were in flight at once, and XLA's CPU runtime starts a device's
  part of a program as soon as its inputs are ready -- not in dispatch order -- so two devices
  could enter the all-reduces of different programs, each waiting in gloo for the other: a hang
  with no error (2 processes x 4 CPU devices, 38 eval batches). Chained, the all-reduces run
  one at a time in the same order everywhere. GPUs and TPUs run each device's programs in
  dispatch order (one stream or queue per device), so they never hung this way.
  """
  out = {}
  # The deployed weights are computed only after the current weights' sweep has finished
  # (device_get below): dispatched up front, their program (collectives too, on sharded
  # params) would be in flight next to the sweep's, which is the same hazard.
  for kind, weights_of in (
      ("current", lambda: fns.effective(state["params"], state["opt_state"], state["step"])),
      ("deployed", lambda: fns.deployed(state["params"], state["opt_state"]))):
    params = weights_of()
    # Several processes: each eval step also waits for the previous one. The chain alone
    # fixed data-parallel meshes, but with sharded weights (FSDP x model, 2 processes x 4 CPU
    # devices) the 38-batch sweep still hung; one program in flight at a time does not.
    one_at_a_time = jax.process_count() > 1
    if one_at_a_time:
      jax.block_until_ready(params)
    sums = None
    model_state = state.get("model_state", {})
    for batch in task.eval_batches():
      batch = sharding_lib.global_batch(sharding_lib.pad_rows(batch, fns.eval_rows),
                                        fns.batch_sharding)
      if sums is None:  # zeros of the sums' shapes, made on every process without a program
        shapes = fns.eval_shapes(params, batch, model_state)
        sums = jax.tree.map(lambda a: jax.make_array_from_callback(
            a.shape, fns.replicated, lambda _, a=a: np.zeros(a.shape, a.dtype)), shapes)
      sums = fns.eval_step(params, batch, model_state, sums)
      if one_at_a_time:
        jax.block_until_ready(sums)
    sums = jax.device_get(sums)
    count = max(float(sums.pop("count")), 1.0)
    tokens = max(float(sums.pop("tokens", count)), 1.0)
    # "X_per_<unit>" is divided by the sum "<unit>s" when eval_fn returns one (e.g. bytes).
    units = {k.rpartition("_per_")[2] + "s" for k in sums if "_per_" in k} - {"tokens"}
    totals = {u: max(float(sums.pop(u)), 1.0) for u in units if u in sums}
    for key, value in sums.items():
      denominator = tokens if key.startswith("token_") or key.endswith("_per_token") else count
      denominator = totals.get(key.rpartition("_per_")[2] + "s", denominator)
      out[f"{kind}_{key}"] = float(value) / denominator
    if task.extra_eval is not None:
      for key, value in task.extra_eval(sharding_lib.to_auto(params, mesh)).items():
        out[f"{kind}_{key}"] = float(value)
  return out


# ----------------------------------------------------------------------------- helpers
def _match_summary(params, recipe) -> str:
  from pgf.sparsify import match_summary  # pylint: disable=g-import-not-at-top
  return match_summary(params, recipe)


def _install(signum, handler):
  if handler is None:  # the previous handler was not installed from Python: leave it
    return None
  try:
    return signal.signal(signum, handler)
  except ValueError:  # not in the main thread: preemption handling is the caller's job
    return None


def _check_finite(pending, checkpointer: Checkpointer) -> None:
  """Stops at the first non-finite step since the last check, before anything is saved."""
  for step, metrics in pending:
    flags = jax.device_get({k: metrics[k] for k in ("finite_loss", "finite_grads", "loss",
                                                    "grad_norm")})
    if not (flags["finite_loss"] and flags["finite_grads"]):
      what = "loss" if not flags["finite_loss"] else "gradient global norm"
      value = flags["loss"] if not flags["finite_loss"] else flags["grad_norm"]
      checkpointer.wait()  # an async save of an earlier, finite step may still be running
      good = checkpointer.all_steps()
      raise NonFiniteError(
          f"Non-finite {what} ({value}) at step {step}. Nothing after step "
          f"{good[-1] if good else 'none'} was saved; the last good checkpoint "
          f"({'step ' + str(good[-1]) if good else 'none yet'}) is intact. Lower "
          "config.optim.lr, raise warm-up or tighten config.optim.grad_clip, then rerun the "
          "same command to resume from it.")


def _log_line(step, total, metrics, recipe, steps_per_sec, examples_per_sec, sparsity):
  metrics = jax.device_get(metrics)
  schedule = recipe.schedule(step - 1)
  eta = (total - step) / max(steps_per_sec, 1e-9)
  return {
      "loss": float(metrics["loss"]), "accuracy": float(metrics.get("accuracy", np.nan)),
      "learning_rate": float(metrics["learning_rate"]), "grad_norm": float(metrics["grad_norm"]),
      "decay": schedule["decay"], "phase": schedule["phase"], "patterns": schedule["patterns"],
      "sparsity": sparsity, "steps_per_sec": steps_per_sec,
      "examples_per_sec": examples_per_sec, "eta_seconds": eta, "total_steps": total,
      "step": step}


def _format(line) -> str:
  patterns = ",".join(sorted(set(line["patterns"].values()))) or "dense"
  eta = int(line["eta_seconds"])
  return (f"[{line['step']}/{line['total_steps']}] loss {line['loss']:.4f} "
          f"acc {line['accuracy']:.3f} lr {line['learning_rate']:.2e} "
          f"{line['phase']} D {line['decay']:.3g} N:M {patterns} "
          f"sparsity {line['sparsity']:.3f} | {line['steps_per_sec']:.2f} steps/s "
          f"{line['examples_per_sec']:.0f} ex/s ETA {eta // 60}m{eta % 60:02d}s")


def _init_params_from(source: str, state, abstract_state, tx):
  """Params from another run's newest checkpoint (e.g. dense pre-training); fresh optimizer.

  Only the params are read (a partial restore), straight into this mesh's shardings, so the
  source may have used another method, optimizer, mesh or number of processes. Every process
  reads the same step, and all of them fail together if any one cannot read it.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from pgf.train import checkpointing  # pylint: disable=g-import-not-at-top
  directory = os.path.join(os.path.abspath(source), "checkpoints")
  steps = []
  if os.path.isdir(directory):
    with ocp.CheckpointManager(directory) as manager:
      steps = sorted(manager.all_steps())
  step = checkpointing.agreed_newest_step(steps, name="newest init_from checkpoint")
  if step is None:
    raise FileNotFoundError(f"config.init_from={source!r}: no checkpoint found under "
                            f"{directory}")
  params, error = None, None
  try:
    params = _read_params(os.path.join(directory, str(step), checkpointing.ITEM),
                          abstract_state["params"], source)
  except Exception as e:  # pylint: disable=broad-except  (orbax raises many types)
    error = e
  # All raise; none waits for the others.
  if not multihost.agree_min(error is None, "init_from params read everywhere", step):
    if isinstance(error, ValueError):
      raise error
    raise ValueError(f"config.init_from={source!r}: step {step} could not be read "
                     + (f"({type(error).__name__}: {error})" if error is not None
                        else "on another process")) from error
  log.info("init_from %s (step %d)", source, step)
  # Model state (BatchNorm statistics) starts fresh, like the optimizer.
  return dict(state, params=params, opt_state=tx.init(params))


def _read_params(item_directory: str, abstract_params, source: str):
  """The "params" subtree of a saved train state, laid out as `abstract_params` (shapes,
  dtypes and shardings); ValueError if the saved params do not fit them."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  handler = ocp.PyTreeCheckpointHandler()
  try:
    saved = handler.metadata(epath.Path(item_directory))
    saved = getattr(saved, "tree", saved)
    spec = lambda a: (tuple(a.shape), np.dtype(a.dtype))
    want = jax.tree.map(spec, abstract_params)
    got = jax.tree.map(spec, saved.get("params"))
    if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
      raise ValueError(f"config.init_from={source!r}: its params do not match this model "
                       "(different variant or vocabulary?)")
    target = {"params": abstract_params}
    return handler.restore(epath.Path(item_directory), args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))["params"]
  finally:
    handler.close()
