"""The config fields every family shares, and up-front config validation.

Each file in configs/ is a few lines: it calls its family's builder (`pgf.families.vit.vit_config`,
`pgf.families.t5.t5_config`, ...) with the paper row's patterns and forwards the `:arg` string,
e.g.

  --config=configs/vit_1_16.py                      the paper's ViT-B/16 ImageNet recipe
  --config=configs/vit_1_16.py:demo                 small ViT on embedded digits (CPU, minutes)
  --config=configs/vit_1_16.py:method=sr_ste,variant=S/16
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from pgf.recipes import Recipe


COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """"demo,method=sr_ste,variant=S/16" -> ConfigDict; values typed like the defaults.

  A bare word sets a boolean flag; unknown keys are an error (typos must not pass silently).
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"config arg {key!r} is not one of {sorted(defaults)} (in {arg!r})")
    if not sep:
      out[key] = True
      continue
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.lower() in ("1", "true", "yes")
    elif defaults[key] is None:
      out[key] = value
    else:
      out[key] = kind(value)
  return ml_collections.ConfigDict(out)


def transformer_rules(ff_pattern: str, qk_pattern: str, qkv_pattern: str, ff: str | None,
                      qk: str | None = None, qkv: str | None = None,
                      attention_axis: int | None = None) -> tuple:
  """A transformer family's sparsity rules: its FF kernels (regex `ff_pattern`) at `ff`, plus
  its Q/K (`qk_pattern`) or Q/K/V (`qkv_pattern`) kernels at `qk` or `qkv` (QKV wins), grouped
  along `attention_axis` when given (else the rule's default axis)."""
  rules = []
  if ff:
    rules.append((ff_pattern, ff))
  attention = (qkv_pattern, qkv) if qkv else (qk_pattern, qk) if qk else None
  if attention:
    rules.append(attention if attention_axis is None else (*attention, attention_axis))
  return tuple(rules)


def apply_size_args(config, arg) -> ml_collections.ConfigDict:
  """The config args `batch=B` and `steps=S` (when > 0) set the global batch and the step count;
  every family applies them last, so they win over its own and its `:demo` defaults."""
  if arg.get("batch", 0) > 0:
    config.batch_size = arg.batch
  if arg.get("steps", 0) > 0:
    config.total_steps = arg.steps
  return config


def add_run_fields(config, *, eval_every: int, checkpoint_every: int, sharding_rules,
                   log_every: int = 100, keep_checkpoints: int = 3) -> ml_collections.ConfigDict:
  """The run fields every family's config shares: logging, evaluation and checkpoint cadence
  (in steps), asynchronous checkpoints (the last `keep_checkpoints` kept), no `init_from`
  workdir, gradient-noise statistics off (`noise_every` > 0: every this many steps, paper §4),
  then the mesh and the family's sharding rules (`add_sharding`); returns config."""
  config.log_every = log_every
  config.eval_every = eval_every
  config.checkpoint_every = checkpoint_every
  config.keep_checkpoints = keep_checkpoints
  config.async_checkpointing = True
  config.init_from = ""
  config.noise_every = 0
  return add_sharding(config, rules=sharding_rules)


def add_sharding(config, data: int = -1, fsdp: int = 1, model: int = 1, axis_types: str = "auto",
                 rules=None) -> ml_collections.ConfigDict:
  """Sets `config.mesh` and `config.sharding_rules` (see pgf/train/sharding.py); returns config.

  The default is data parallelism over every device. Override on the command line, e.g.
  `--config.mesh.fsdp=4 --config.mesh.data=-1` for FSDP within groups of 4 devices.
  """
  from pgf.train import sharding  # pylint: disable=g-import-not-at-top
  config.mesh = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, model=model,
                                               axis_types=axis_types))
  config.sharding_rules = tuple(tuple(rule) for rule in (rules or sharding.DEFAULT_RULES))
  add_memory_fields(config)
  return config


def add_memory_fields(config) -> ml_collections.ConfigDict:
  """The fields that trade speed for memory (docs/aot.md), present in every config so that
  `--config.micro_batches=4` etc. work on the command line:

    micro_batches        gradient accumulation over this many micro-batches (1: off);
    device_micro_batch   > 0: instead, micro-batches of at most this many examples per
                         data-parallel device (the count then follows the slice size);
    model.remat          "none" | "dots" | "block": rematerialised transformer blocks.
  """
  if "micro_batches" not in config:
    config.micro_batches = 1
  if "device_micro_batch" not in config:
    config.device_micro_batch = 0
  if "model" in config and "remat" not in config.model:
    config.model.remat = "none"
  return config


def sparsity_config(method: str, rules, **overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.method = method
  config.rules = tuple(tuple(rule) for rule in rules)
  config.dense_fraction = 0.05
  config.finetune_fraction = 0.1
  config.decay_coefficient = config_dict.placeholder(float)  # None: D ~ 0 at 70% of training
  config.decay_end_fraction = 0.7
  config.gradient = "decayed"
  config.sr_ste_lambda = 2e-4
  config.mask_update_every = 1
  config.sdgf_k = 8
  config.sdgf_stages = config_dict.placeholder(tuple)
  config.update(overrides)
  return config


def build_recipe(config, total_steps: int) -> Recipe:
  """The pgf.Recipe that `config.sparsity` describes, over `total_steps` steps."""
  s = config.sparsity
  return Recipe(
      method=s.method, rules=tuple(tuple(r) for r in s.rules), total_steps=total_steps,
      dense_fraction=s.dense_fraction, finetune_fraction=s.finetune_fraction,
      decay_coefficient=s.get("decay_coefficient"), decay_end_fraction=s.decay_end_fraction,
      gradient=s.gradient, sr_ste_lambda=s.sr_ste_lambda,
      mask_update_every=s.mask_update_every, sdgf_k=s.sdgf_k,
      sdgf_stages=tuple(s.sdgf_stages) if s.get("sdgf_stages") else None)


def validate(config, process_count: int = 1, device_count: int = 1,
             raise_errors: bool = True) -> list[str]:
  """Every config problem at once, each naming the field and the value, before compiling.

  Raises one ValueError listing them all, or returns the list when `raise_errors` is False
  (the train loop adds the problems only visible with data and params, then raises once).
  """
  problems: list[str] = []

  def need(condition: bool, message: str):
    if not condition:
      problems.append(message)

  from pgf import families  # pylint: disable=g-import-not-at-top
  model_name = config.model.get("name")
  try:
    family = families.get(model_name)
  except ValueError as e:
    family = None
    problems.append(str(e))
  batch = config.get("batch_size")
  if not isinstance(batch, int) or batch <= 0:
    problems.append(f"config.batch_size={batch!r}: must be a positive int")
  else:
    need(batch % process_count == 0,
         f"config.batch_size={batch} is not divisible by the {process_count} processes")
  remat = config.model.get("remat", "none")
  need(remat in ("none", "dots", "block"),
       f"config.model.remat={remat!r}: 'none', 'dots' or 'block' (rematerialised blocks)")
  micro = config.get("micro_batches", 1)
  if not isinstance(micro, int) or isinstance(micro, bool) or micro < 1:
    problems.append(f"config.micro_batches={micro!r}: must be an int >= 1 (gradient "
                    "accumulation over that many micro-batches of config.batch_size)")
  elif isinstance(batch, int) and batch > 0 and batch % micro:
    problems.append(f"config.micro_batches={micro} does not divide config.batch_size={batch}")
  per_micro = config.get("device_micro_batch", 0)
  if not isinstance(per_micro, int) or isinstance(per_micro, bool) or per_micro < 0:
    problems.append(f"config.device_micro_batch={per_micro!r}: an int >= 0 (at most this many "
                    "examples per device per micro-batch; 0 = use config.micro_batches)")
  elif per_micro > 0 and isinstance(micro, int) and micro > 1:
    # Either one decides the count; taking one and ignoring the other would be silent.
    problems.append(f"config.micro_batches={micro} and config.device_micro_batch={per_micro} "
                    "both set the gradient-accumulation count: set one, the other to its off "
                    "value (--config.device_micro_batch=0 to give the count yourself)")
  steps = config.get("total_steps", -1)
  epochs = config.get("total_epochs", 0.0)
  need((isinstance(steps, int) and steps > 0) or (not steps or steps < 0) and epochs > 0,
       f"config.total_steps={steps!r} / config.total_epochs={epochs!r}: training needs a "
       "positive number of steps (or epochs when total_steps <= 0)")
  if isinstance(steps, int) and steps == 0:
    problems.append("config.total_steps=0: must be positive (or -1 to use total_epochs)")
  for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
    value = config.get(field)
    need(isinstance(value, int) and value > 0, f"config.{field}={value!r}: must be an int > 0")
  eval_every = config.get("eval_every", 0)
  need(isinstance(eval_every, int) and eval_every >= 0,
       f"config.eval_every={eval_every!r}: must be an int >= 0 (0 = only at the end)")
  noise_every = config.get("noise_every", 0)
  need(isinstance(noise_every, int) and noise_every >= 0,
       f"config.noise_every={noise_every!r}: must be an int >= 0 (0 = off)")
  optim = config.optim
  from pgf.train import sharding  # pylint: disable=g-import-not-at-top
  problems.extend(sharding.config_problems(config, device_count))
  need(optim.lr > 0, f"config.optim.lr={optim.lr!r}: must be > 0")
  need(optim.schedule in ("cosine", "constant", "rsqrt"),
       f"config.optim.schedule={optim.schedule!r}: 'cosine', 'constant' or 'rsqrt'")
  need(0 <= optim.b1 < 1 and 0 <= optim.b2 < 1,
       f"config.optim.b1/b2=({optim.b1}, {optim.b2}): must be in [0, 1)")
  need(optim.weight_decay >= 0, f"config.optim.weight_decay={optim.weight_decay!r}: >= 0")
  if family is not None:
    problems.extend(family.problems(config))
  try:
    build_recipe(config, steps if isinstance(steps, int) and steps > 0 else 100_000)
  except ValueError as e:
    problems.extend("config.sparsity: " + line.strip(" -") for line in
                    str(e).splitlines()[1:])
  except (AttributeError, KeyError, TypeError) as e:
    problems.append(f"config.sparsity: {e}")
  if problems and raise_errors:
    raise ValueError("Invalid config:\n  - " + "\n  - ".join(problems))
  return problems


def load(spec: str) -> ml_collections.ConfigDict:
  """"configs/vit_1_16.py:demo,method=sr_ste" -> the ConfigDict its get_config(arg) returns."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def apply_overrides(config, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted fields ({"sparsity.method": "sr_ste", "model.width": 32}) in place.

  Like --config.X=... on the command line: an unknown field is an error naming it, and rules
  given as lists (JSON) become tuples.
  """
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
      if name not in node:
        raise ValueError(f"config override {dotted!r}: no field {name!r}")
      node = node[name]
    if leaf not in node:
      raise ValueError(f"config override {dotted!r}: no field {leaf!r}")
    if leaf == "rules":
      value = tuple(tuple(rule) for rule in value)
    node[leaf] = value
  return config


def to_plain(config) -> dict[str, Any]:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


__all__ = ["parse_arg", "sparsity_config", "build_recipe", "validate", "load",
           "apply_overrides", "add_sharding"]
