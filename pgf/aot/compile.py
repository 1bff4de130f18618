"""Compile the trainer's own train and eval steps for a TPU slice or GPU box this machine does
not have.

`compile_steps(config, topology)` builds exactly what `pgf.train.train_and_evaluate` builds
(preflight, optimizer, mesh over the slice's devices, state shardings, the jitted steps of
`pgf.train._compile_steps`, gradient accumulation and remat included) with abstract inputs,
and compiles them with libtpu's (or the CUDA plugin's) compile-only client. Nothing is
allocated or run.
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax
import numpy as np

from pgf.aot import hlo, standins
from pgf.aot.topology import Topology, usable_bytes

__all__ = ["StepResult", "ConfigResult", "compile_steps", "parse_oom"]

GIB = 2**30


@dataclasses.dataclass
class StepResult:
  name: str                          # "train" / "eval"
  ok: bool                           # compiled (False: the compiler refused, see error)
  seconds: float
  memory: dict | None = None         # per-device bytes: arguments, outputs, aliased, temp, code
  flops: float | None = None         # per device, compiler cost model
  bytes_accessed: float | None = None
  collectives: dict | None = None    # hlo.summarize
  error: str | None = None
  oom: dict | None = None            # parse_oom of the error: {"required", "available"} bytes

  @property
  def peak_bytes(self) -> float | None:
    """Per-device bytes the step holds at once: live arguments + outputs (less donated
    buffers reused as outputs) + temporaries + code."""
    if self.memory is None:
      return self.oom.get("required") if self.oom else None
    m = self.memory
    return m["arguments"] + m["outputs"] - m["aliased"] + m["temp"] + m["code"]


@dataclasses.dataclass
class ConfigResult:
  topology: Topology
  steps: list[StepResult]
  notes: list[str]
  global_batch: int
  micro_batches: int
  remat: str
  mesh: dict
  state_bytes: int = 0               # per device: params + optimizer state (+ model state)

  def fits(self) -> bool:
    usable = usable_bytes(self.topology.chip)
    return all(s.ok and s.peak_bytes is not None and s.peak_bytes <= usable for s in self.steps)


_OOM_PATTERNS = (
    re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM "
               r"\(([\d.]+)([KMGT])\)"),
    re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"),
)
_UNIT = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_oom(message: str) -> dict | None:
  """{"required", "available"} bytes of an XLA out-of-memory compile error, else None."""
  if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
    return None
  for pattern in _OOM_PATTERNS:
    m = pattern.search(message)
    if m:
      return {"required": float(m.group(1)) * _UNIT[m.group(2)],
              "available": float(m.group(3)) * _UNIT[m.group(4)]}
  return {}


def _compile(name: str, lowered_fn) -> StepResult:
  t0 = time.time()
  try:
    compiled = lowered_fn().compile()
  except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError and friends)
    message = str(e)
    return StepResult(name, False, time.time() - t0, error=message.strip().split("\n")[0][:600],
                      oom=parse_oom(message))
  seconds = time.time() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  memory = {"arguments": int(mem.argument_size_in_bytes), "outputs": int(mem.output_size_in_bytes),
            "aliased": int(mem.alias_size_in_bytes), "temp": int(mem.temp_size_in_bytes),
            "code": int(mem.generated_code_size_in_bytes)}
  flops, moved = cost.get("flops"), cost.get("bytes accessed")  # None: no cost model (GPU)
  return StepResult(name, True, seconds, memory, None if flops is None else float(flops),
                    None if moved is None else float(moved),
                    hlo.summarize(hlo.collectives(compiled.as_text())))


def compile_steps(config, topology: Topology, *, steps=("train", "eval")) -> ConfigResult:
  """Compiles the config's train and/or eval step for `topology` (see module docstring)."""
  from pgf.train import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from pgf.train import loop as train  # pylint: disable=g-import-not-at-top
  devices = topology.devices()
  notes: list[str] = []
  with standins.data_free(config, notes):
    task, recipe, total_steps = train.preflight(config, 0, topology.hosts,
                                                device_count=len(devices))
  warmup_steps = train.steps_of(config, task, "warmup_steps", "warmup_epochs")
  tx, lr_schedule = train.build_optimizer(config, recipe, total_steps, warmup_steps)
  mesh = sharding_lib.build_mesh(config.get("mesh"), devices=devices)
  noise_every = config.get("noise_every", 0) if recipe.rules else 0
  rng = jax.random.key(config.seed)
  init_state = train._init_state_fn(task, recipe, tx, noise_every)  # pylint: disable=protected-access
  abstract_state = jax.eval_shape(init_state, rng)
  state_shardings = sharding_lib.tree_shardings(abstract_state, mesh,
                                                sharding_lib.rules_of(config))
  abstract_state = sharding_lib.with_shardings(abstract_state, state_shardings)
  micro = train.micro_batches_of(config, mesh)
  fns = train._compile_steps(task, recipe, tx, lr_schedule, mesh, state_shardings,  # pylint: disable=protected-access
                             noise_every, jax.random.fold_in(rng, 1), micro)

  def batch_of(rows):
    return {k: jax.ShapeDtypeStruct((rows,) + np.shape(v)[1:], np.asarray(v).dtype,
                                    sharding=fns.batch_sharding)
            for k, v in task.example_batch.items()}

  state_bytes = sum(
      int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
      for leaf in jax.tree.leaves(abstract_state)
      if hasattr(leaf, "sharding") and not jax.dtypes.issubdtype(leaf.dtype,
                                                                 jax.dtypes.prng_key))
  results = []
  if "train" in steps:
    results.append(_compile("train", lambda: fns.train_step.lower(
        abstract_state, batch_of(config.batch_size))))
  if "eval" in steps:
    shards = sharding_lib.batch_shard_count(mesh)
    rows = config.get("eval_batch_size") or config.batch_size
    rows = -(-rows // shards) * shards
    def lower_eval():
      # The trainer's eval step carries the running sums in and out (see loop._evaluate).
      params, batch = abstract_state["params"], batch_of(rows)
      model_state = abstract_state.get("model_state", {})
      sums = jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=fns.replicated),
          fns.eval_shapes(params, batch, model_state))
      return fns.eval_step.lower(params, batch, model_state, sums)
    results.append(_compile("eval", lower_eval))
  return ConfigResult(topology, results, notes, config.batch_size, micro,
                      config.model.get("remat", "none"), dict(mesh.shape), state_bytes)
