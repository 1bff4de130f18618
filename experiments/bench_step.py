r"""Benchmark: train-step throughput of every pgf method against dense, in one process.

Each method gets the same model, batch, optimizer chain (gradient_flow -> clip -> AdamW, as in
`pgf.train`) and mesh, starting 40% into training (MDGF decaying, SDGF in a middle stage, so
masks are live). Every round times each method right next to a dense measurement (which one
goes first alternates), in a rotating order; "step / dense" is the median over rounds of those
back-to-back ratios, so load from other jobs that drifts during the run cancels out, and
"min / min" compares the fastest (least disturbed) steps. "pgf ops" times what a method adds to
the step on its own: `pgf.sparsify` of the params plus `gradient_flow`'s update (masks,
decay, gradient shaping), jitted alone, for the matched kernels.

  python experiments/bench_step.py                      # ViT-S/16, batch 32, 224px, CPU
  python experiments/bench_step.py --variant=B/16 --batch=128 --rounds=5   # e.g. on a GPU
  python experiments/bench_step.py --mesh=data=-1,fsdp=2 --methods=dense,mdgf_exp
  python experiments/bench_step.py --config=configs/t5_1_8_qkv_1_8.py:demo   # T5, embedded data
  python experiments/bench_step.py --config=configs/swin_1_16.py --variant=T --batch=8   # SwinV2
  python experiments/bench_step.py --config=configs/resnet50_1_8.py --batch=64   # ResNet-50, 32px
  python experiments/bench_step.py --config=configs/lm_1_16.py:demo   # decoder LM, Shakespeare bytes

ViT, SwinV2 and ResNet configs train on random images (`--image-size`; default: 224 for ViT,
the config's for SwinV2 and ResNet), other configs on their task's own data
(use a `:demo` config to stay offline). Prints a markdown table; the goal for ViT-S/16 at batch
32 on CPU is a ratio <= 1.03 for every method.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

import pgf  # pylint: disable=g-import-not-at-top
from pgf.train import config_lib, sharding  # pylint: disable=g-import-not-at-top
from pgf.train import build_optimizer, build_recipe  # pylint: disable=g-import-not-at-top

START_FRACTION = 0.4
TOTAL_STEPS = 10_000


def parse_mesh(text: str) -> dict:
  """"data=-1,fsdp=2" -> {"data": -1, "fsdp": 2} (axis_types stays a string)."""
  out = {}
  for item in filter(None, text.split(",")):
    key, _, value = item.partition("=")
    out[key.strip()] = value.strip() if key.strip() == "axis_types" else int(value)
  return out


def synthetic_t5(config, batch: int, input_length: int, target_length: int,
                 vocab_size: int = 32128):
  """(init_fn, loss_fn, batch) for the config's T5 on random tokens (T5 v1.1's vocabulary size
  by default), with the loss of `pgf.train.text_tasks` (token cross-entropy plus the config's z-loss)."""
  from pgf.train import text_tasks  # pylint: disable=g-import-not-at-top
  from pgf.models import t5 as t5_lib  # pylint: disable=g-import-not-at-top
  m = config.model
  sizes = {k: m.get(k) for k in t5_lib.VARIANTS["base"] if m.get(k) is not None}
  model = t5_lib.T5(t5_lib.get_config(
      m.variant, vocab_size, dropout_rate=m.get("dropout_rate", 0.0),
      logits_via_embedding=m.get("logits_via_embedding", False),
      dtype=jnp.dtype(m.get("dtype", "float32")), **sizes))
  rng = np.random.default_rng(0)
  data = {"inputs": rng.integers(1, vocab_size, (batch, input_length)).astype(np.int32),
          "targets": rng.integers(1, vocab_size, (batch, target_length)).astype(np.int32),
          "valid": np.ones((batch,), bool)}
  z_loss = float(config.get("z_loss", 0.0))

  def init_fn(key):
    return model.init({"params": key}, data["inputs"][:1], data["targets"][:1],
                      train=False)["params"]

  def loss_fn(params, batch, key, train):
    logits = model.apply({"params": params}, batch["inputs"],
                         t5_lib.shift_right(batch["targets"]), train=train,
                         rngs={"dropout": key})
    weights = text_tasks.target_weights(batch)
    losses = text_tasks.token_losses(logits, batch["targets"], z_loss)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0), {}

  return init_fn, loss_fn, data


def task_based(config):
  """(init_fn, loss_fn, batch) from the config's own task and its first training batch."""
  from pgf.train.tasks import build_task  # pylint: disable=g-import-not-at-top
  task = build_task(config)
  return task.init_fn, task.loss_fn, task.train_source.train_batch(0)


def at_step(state, step: int):
  """The train state moved to `step`: the loop's counter and gradient_flow's count agree."""
  is_flow = lambda x: isinstance(x, (pgf.GradientFlowState, pgf.GradientFlowMaskState))
  # Separate scalars: the step is donated, and one buffer cannot be donated twice.
  opt_state = jax.tree.map(lambda x: x._replace(count=jnp.int32(step)) if is_flow(x) else x,
                           state["opt_state"], is_leaf=is_flow)
  return {"step": jnp.int32(step), "params": state["params"], "opt_state": opt_state}


def build_method(config, method: str, init_fn, loss_fn, mesh):
  """(jitted step, initial state, pgf-ops timer) for one method, as pgf.train builds them."""
  config = config_lib.apply_overrides(config.copy_and_resolve_references(),
                                      {"sparsity.method": method})
  # As pgf.train does: SDGF-geometric's k lowered per rule where k*M does not fit a kernel.
  recipe, _ = pgf.fit_sdgf_k(jax.eval_shape(init_fn, jax.random.key(0)),
                             build_recipe(config, TOTAL_STEPS))
  tx, _ = build_optimizer(config, recipe, TOTAL_STEPS, warmup_steps=TOTAL_STEPS // 20)
  model_loss = sharding.auto_model(lambda p, b, r: loss_fn(p, b, r, True), mesh)

  def init_state(key):
    params = init_fn(key)
    return {"step": jnp.zeros([], jnp.int32), "params": params, "opt_state": tx.init(params)}

  def train_step(state, batch):
    step = state["step"]

    def loss(params):
      effective = pgf.sparsify(params, recipe, state["opt_state"])
      return model_loss(effective, batch, jax.random.fold_in(jax.random.key(1), step))

    (value, _), grads = jax.value_and_grad(loss, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"step": step + 1, "params": params, "opt_state": opt_state}, value

  abstract = jax.eval_shape(init_state, jax.random.key(0))
  shardings = sharding.tree_shardings(abstract, mesh, sharding.rules_of(config))
  state = sharding.jit(init_state, mesh, out_shardings=shardings)(jax.random.key(0))
  state = jax.device_put(at_step(state, int(START_FRACTION * TOTAL_STEPS)), shardings)
  step = sharding.jit(train_step, mesh, donate_argnums=(0,),
                      in_shardings=(shardings, sharding.batch_sharding(mesh)),
                      out_shardings=(shardings, sharding.replicated(mesh)))
  return step, state, pgf_ops_timer(recipe, state["params"], mesh)


def pgf_ops_timer(recipe, params, mesh):
  """() -> seconds of pgf's own per-step work (forward sparsify + gradient_flow) on `params`."""
  if recipe.method == "dense":
    return lambda: 0.0
  params = jax.tree.map(jnp.copy, params)  # its own copy: the train step donates the state
  flow = pgf.gradient_flow(recipe)
  flow_state = flow.init(params)._replace(count=jnp.int32(int(START_FRACTION * TOTAL_STEPS)))
  matched = set(pgf.match_leaves(params, recipe))

  def ops(params, flow_state):
    effective = pgf.sparsify(params, recipe, flow_state)
    shaped, _ = flow.update(params, flow_state, params)  # any gradient of the right shapes
    pick = lambda tree: {path: leaf for path, leaf in flat_with_paths(tree) if path in matched}
    return pick(effective), pick(shaped)  # only the kernels pgf touches: no copies of the rest

  jitted = sharding.jit(ops, mesh)
  jax.block_until_ready(jitted(params, flow_state))

  def timer():
    start = time.perf_counter()
    jax.block_until_ready(jitted(params, flow_state))
    return time.perf_counter() - start

  return timer


def flat_with_paths(tree):
  from pgf.sparsify import leaf_path  # pylint: disable=g-import-not-at-top
  return [(leaf_path(kp), leaf) for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def compile_step(step, state, batch):
  """The ahead-of-time compiled `step` for these arguments (thread-safe: XLA compiles outside
  the GIL, so several methods compile at once); `step` itself where it cannot be lowered."""
  if not hasattr(step, "lower"):
    return step
  return step.lower(state, batch).compile()


def step_memory_bytes(compiled) -> int | None:
  """Device bytes one call of a compiled step holds: arguments + outputs + temporaries - aliased
  (donated) buffers, from XLA's memory analysis; None where the backend gives none."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  # absent on some backends and versions
    return None


def build_methods(config, methods, init_fn, loss_fn, batch, mesh, threads: int = 0,
                  log=print):
  """{method: (compiled step, state, pgf-ops timer, info)}, every step compiled and warmed up.

  `threads` > 1 compiles that many methods at once (each compile is single-threaded in XLA for
  the most part, so on a many-core host this divides the compile time).
  """
  import concurrent.futures  # pylint: disable=g-import-not-at-top

  def build(method):  # traced in the thread (JAX and Flax keep trace state per thread)
    step, state, ops_timer = build_method(config, method, init_fn, loss_fn, mesh)
    step = compile_step(step, state, batch)
    return step, state, ops_timer

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    futures = {m: pool.submit(build, m) for m in methods}
    built = {m: f.result() for m, f in futures.items()}
  log(f"# built and compiled {len(methods)} steps in {time.perf_counter() - start:.1f}s "
      f"({max(1, threads)} at a time)")
  out = {}
  for method in methods:
    step, state, ops_timer = built[method]
    start = time.perf_counter()
    for _ in range(2):  # two steps that touch everything once
      state, loss = step(state, batch)
    jax.block_until_ready(loss)
    info = {"warmup_s": time.perf_counter() - start, "step_bytes": step_memory_bytes(step)}
    out[method] = (step, state, ops_timer, info)
  return out


def measure_methods(config, methods, init_fn, loss_fn, batch, mesh, rounds: int, steps: int,
                    threads: int = 0, log=print):
  """Every method's step timed back to back with dense (see the module docstring).

  Returns {"times": {method: [s per step per measurement]}, "ratios": {sparse method: [step /
  dense per round]}, "ops": {method: [pgf-ops s]}, "info": {method: {warmup_s, step_bytes}}}.
  """
  methods = list(methods)
  if "dense" not in methods:
    methods.insert(0, "dense")
  built = build_methods(config, methods, init_fn, loss_fn, batch, mesh, threads, log)
  steps_of = {m: b[0] for m, b in built.items()}
  states = {m: b[1] for m, b in built.items()}
  ops_timers = {m: b[2] for m, b in built.items()}

  def timed(method) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      states[method], loss = steps_of[method](states[method], batch)
    jax.block_until_ready(loss)
    return (time.perf_counter() - start) / steps

  sparse = [m for m in methods if m != "dense"]
  times = {method: [] for method in methods}
  ratios = {method: [] for method in sparse}
  ops = {method: [] for method in methods}
  for r in range(rounds):
    k = r % len(sparse) if sparse else 0
    for i, method in enumerate(sparse[k:] + sparse[:k]):
      pair = ("dense", method) if (r + i) % 2 == 0 else (method, "dense")
      measured = {name: timed(name) for name in pair}
      for name, seconds in measured.items():
        times[name].append(seconds)
      ratios[method].append(measured[method] / measured["dense"])
      ops[method].append(min(ops_timers[method]() for _ in range(3)))
    if not sparse:
      times["dense"].append(timed("dense"))
    log(f"# round {r + 1}/{rounds}: dense {1e3 * times['dense'][-1]:.0f}ms " + " ".join(
        f"{m} x{ratios[m][-1]:.3f}" for m in sparse))
  del states  # donated buffers: nothing outside may use them
  return {"times": times, "ratios": ratios, "ops": ops,
          "info": {m: b[3] for m, b in built.items()}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/vit_1_16.py")
  parser.add_argument("--variant", default="S/16", help="ViT variant ('' keeps the config's); "
                      "for a SwinV2 config T, S, B or L (anything else keeps the config's)")
  parser.add_argument("--batch", type=int, default=32, help="global batch size")
  parser.add_argument("--image-size", type=int, default=0,
                      help="random images' side (default: 224 for ViT, the config's for SwinV2 "
                      "and ResNet)")
  parser.add_argument("--mesh", default="", help="e.g. data=-1,fsdp=2,model=1,axis_types=auto")
  # sdgf_custom needs user-given stages; its step is sdgf_stepwise's with other patterns.
  parser.add_argument("--methods", default=",".join(m for m in pgf.METHODS if m != "sdgf_custom"))
  parser.add_argument("--steps", type=int, default=2, help="timed steps per method per round")
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()

  config = config_lib.load(os.path.join(ROOT, args.config) if not os.path.isfile(args.config)
                           else args.config)
  config.batch_size = args.batch
  if args.mesh or not config.get("mesh"):
    config_lib.add_sharding(config, **parse_mesh(args.mesh),
                            rules=config.get("sharding_rules") or None)
  from pgf import families  # pylint: disable=g-import-not-at-top
  init_fn, loss_fn, local_batch, described = families.of_config(config).bench_inputs(
      config, args.batch, args.image_size, args.variant)
  problems = sharding.config_problems(config, jax.device_count())
  if problems:
    raise SystemExit("Invalid config:\n  - " + "\n  - ".join(problems))
  mesh = sharding.build_mesh(config.mesh)
  batch = sharding.global_batch(local_batch, sharding.batch_sharding(mesh))
  methods = args.methods.split(",")
  if "dense" not in methods:
    methods.insert(0, "dense")
  log = lambda line: print(line, flush=True)

  result = measure_methods(config, methods, init_fn, loss_fn, batch, mesh, args.rounds,
                           args.steps, log=log)
  times, ratios, ops = result["times"], result["ratios"], result["ops"]

  ff = ",".join(f"{rule[1]}" for rule in config.sparsity.rules) or "none"
  print(f"\n{config.model.name} {described}, rules {ff}, mesh "
        f"{dict(mesh.shape)} {mesh.axis_types[0].name}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}; {args.rounds} rounds x "
        f"{args.steps} steps per measurement, each method back to back with dense\n")
  print("| method | step ms (median) | steps/s | examples/s | step / dense (median) "
        "| range | min / min | pgf ops ms |")
  print("|---|---|---|---|---|---|---|---|")
  fastest_dense = min(times["dense"])
  for method in methods:
    median = statistics.median(times[method])
    r = ratios.get(method) or [1.0]
    pgf_ms = f"{1e3 * statistics.median(ops[method]):.1f}" if ops[method] else "0"
    print(f"| {method} | {1e3 * median:.0f} | {1 / median:.3f} | {args.batch / median:.2f} "
          f"| {statistics.median(r):.3f} | {min(r):.3f}-{max(r):.3f} "
          f"| {min(times[method]) / fastest_dense:.3f} | {pgf_ms} |")


if __name__ == "__main__":
  main()
