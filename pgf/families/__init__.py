"""Model families: one module per family says everything the rest of pgf needs to know about it.

The registry below maps a family's name to its module. The trainer, `pgf.analysis.flops`,
`pgf.train.sharding`, `pgf.deploy`, `experiments/bench_step.py` and `experiments/sweep.py` look a
family up here by name (`get("vit")`, or `of_config(config)` for `config.model.name`) and never
branch on it. A family module is imported on first use, so the registry imports none of them.

What a family module provides (docs/families.md has the details):

  NAME              the `config.model.name` its configs set
  <name>_config()   the config builder the files in configs/ call (`vit_config`, `t5_config`, ...)
  rules(ff, ...)    the N:M sparsity rules of a config row (FF, and Q/K or Q/K/V)
  SHARDING_RULES    (regex, partition) rules placing its parameters on the device mesh
  problems(config)  every problem in the family's own config fields, each naming the field
  build_task(config, process_index, process_count)   the `Task` the train loop trains
  abstract_model(config)   (model, abstract params, example inputs), reading no data
  matmuls(config, **options)   its matmuls for the FLOPs counter (`pgf.analysis.flops`)
  flops_header(config, matmuls)   (one-line description, [(unit, divisor), ...]) for FLOPs tables
  bench_inputs(config, batch, image_size, variant)   (init_fn, loss_fn, batch, description)
                    for `experiments/bench_step.py`, on synthetic data

A new family: add `pgf/families/<name>.py` (and its model under pgf/models/, data under
pgf/data/), then register it with one line in FAMILIES.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module. The registration line of a new family goes here.
FAMILIES = {
    "vit": "pgf.families.vit",
    "swin": "pgf.families.swin",
    "resnet": "pgf.families.resnet",
    "t5": "pgf.families.t5",
    "wmt": "pgf.families.wmt",
    "gpt": "pgf.families.gpt",
}

# Every name a family module must define (checked by `get`, so a missing one fails by name).
INTERFACE = ("NAME", "rules", "SHARDING_RULES", "problems", "build_task", "abstract_model",
             "matmuls", "flops_header", "bench_inputs")


def names() -> tuple[str, ...]:
  return tuple(FAMILIES)


def get(name: str) -> ModuleType:
  """The family module registered as `name`; ValueError naming the known ones otherwise."""
  if name not in FAMILIES:
    raise ValueError(f"config.model.name={name!r}: not a registered model family; one of "
                     f"{sorted(FAMILIES)} (pgf/families/__init__.py)")
  module = importlib.import_module(FAMILIES[name])
  missing = [field for field in INTERFACE if not hasattr(module, field)]
  if missing:
    raise TypeError(f"model family {name!r} ({FAMILIES[name]}) does not define {missing} "
                    "(see docs/families.md)")
  return module


def of_config(config) -> ModuleType:
  """The family of `config.model.name`."""
  model = config.get("model") if hasattr(config, "get") else None
  return get(model.get("name") if model is not None else None)
