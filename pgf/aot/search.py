"""The fit search of `python -m pgf.aot`: which change makes a config fit a slice.

When a step does not fit, `suggest` compiles variants of the config, cheapest first (more
micro-batches: same global batch and step count; rematerialised blocks; FSDP over every
device), and stops at the first that fits. Kept apart from the command line so that it can be
used (and tested) without defining its flags.
"""

from __future__ import annotations

import copy

GIB = 2**30


def _gib(x) -> str:
  return "-" if x is None else f"{x / GIB:.2f}"


def variants(config, result, usable):
  """Changes to try, cheapest first: more micro-batches (same global batch, same step count),
  then rematerialised blocks, then FSDP over every device."""
  from pgf.train import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  shards = 1
  for axis in sharding_lib.BATCH_AXES:
    shards *= result.mesh.get(axis, 1)
  per_device = config.batch_size // shards
  m0, r0 = result.micro_batches, config.model.get("remat", "none")
  # A config that sizes micro-batches per device (config.device_micro_batch) gets its change
  # in that field: setting micro_batches next to it would be refused.
  per_micro = (config.get("device_micro_batch", 0) or 0) > 0

  def count(k):
    return {"device_micro_batch": per_device // k} if per_micro else {"micro_batches": k}
  ratio = max((s.oom.get("required", 0) / max(s.oom.get("available", 1), 1)
               for s in result.steps if s.oom), default=1.0)
  micro = []
  k = m0 * 2
  while per_device % k == 0 and k <= per_device:
    micro.append(k)
    k *= 2
  # Temporaries shrink about linearly with the micro-batch: skip counts that cannot be enough.
  likely = [k for k in micro if k / m0 >= ratio * 0.7] or micro[-1:]
  out = [count(k) for k in likely[:3]]
  for remat in ("dots", "block"):
    if r0 == "none" or (r0 == "dots" and remat == "block"):
      out.append({"model.remat": remat})
      out += [{"model.remat": remat, **count(k)} for k in micro[:3]]
  if result.mesh.get("fsdp", 1) == 1 and shards > 1:
    fsdp = {"mesh.data": 1, "mesh.fsdp": -1}
    # The train state alone (params + optimizer moments, replicated) takes most of the chip:
    # only sharding it helps, so FSDP goes first.
    if result.state_bytes > 0.5 * usable:
      out.insert(0, fsdp)
    else:
      out.append(fsdp)
  return out


def apply_change(config, change: dict):
  """A copy of `config` with `change` ({dotted field: value}) applied."""
  new = copy.deepcopy(config)
  with new.unlocked():
    for key, value in change.items():
      node = new
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return new


def flags_of(change: dict) -> str:
  """`change` as pgf.main override flags."""
  return " ".join(f"--config.{k}={v}" for k, v in change.items())


def suggest(config, topo, result, compile_steps, usable: float, max_tries: int = 6):
  """Compiles `variants` in order (at most `max_tries`) until one fits.

  `compile_steps(config, topo, steps=...)` is `pgf.aot.compile.compile_steps` (or a stand-in);
  only the steps of `result` that do not fit are recompiled. Returns (first fit as
  (change, result) or None, [(change, peak bytes or None, outcome)] in order).
  """
  tried = []
  first_fit = None
  # Only the steps that do not fit are recompiled.
  failing = [s.name for s in result.steps if not (s.ok and s.peak_bytes <= usable)]
  for change in variants(config, result, usable)[:max_tries]:
    candidate = apply_change(config, change)
    try:
      r = compile_steps(candidate, topo, steps=failing)
    except ValueError as e:  # the variant itself is invalid for this mesh: skip it
      tried.append((change, None, str(e).split("\n")[-1]))
      continue
    peak = max((s.peak_bytes or 0) for s in r.steps)
    tried.append((change, peak, "fits" if r.fits() else "does not fit"))
    print(f"  tried {flags_of(change)}: peak {_gib(peak)} GiB per device -> {tried[-1][2]}",
          flush=True)
    if r.fits():
      first_fit = (change, r)
      break
  return first_fit, tried
