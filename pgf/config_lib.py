"""Shared config builders for the files in configs/ and up-front config validation.

Each file in configs/ is a few lines: it calls `vit_config(...)` or `t5_config(...)` with the
paper row's patterns and forwards the `:arg` string, e.g.

  --config=configs/vit_1_16.py                      the paper's ViT-B/16 ImageNet recipe
  --config=configs/vit_1_16.py:demo                 small ViT on embedded digits (CPU, minutes)
  --config=configs/vit_1_16.py:method=sr_ste,variant=S/16
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict


VIT_FF = r"encoder/encoderblock_\d+/mlp/fc[12]/kernel"
VIT_QK = r"encoder/encoderblock_\d+/attn/(query|key)/kernel"
VIT_QKV = r"encoder/encoderblock_\d+/attn/(query|key|value)/kernel"
IMAGE_DATASETS = ("digits", "cifar10", "imagenet2012")


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


def vit_rules(ff: str | None, qk: str | None = None, qkv: str | None = None):
  rules = []
  if ff:
    rules.append((VIT_FF, ff))
  if qkv:
    rules.append((VIT_QKV, qkv))
  elif qk:
    rules.append((VIT_QK, qk))
  return tuple(rules)


def vit_config(ff: str | None = "1:16", qk: str | None = None, qkv: str | None = None,
               arg: str | None = None) -> ml_collections.ConfigDict:
  """The paper's ViT-B/16 ImageNet-1k recipe (or its `:demo` twin) at the given patterns."""
  arg = parse_arg(arg, demo=False, method="mdgf_exp", variant="B/16", dataset="",
                  steps=-1, seed=0, batch=-1)
  config = ml_collections.ConfigDict()
  config.seed = arg.seed
  config.model = ml_collections.ConfigDict(dict(
      name="vit", variant=arg.variant, pool_type="tok", dropout=0.0, attention_dropout=0.0,
      drop_path=0.1, dtype="float32"))
  config.sparsity = sparsity_config(arg.method, vit_rules(ff, qk, qkv))
  config.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, reference_batch=4096, schedule="cosine", warmup_steps=-1, warmup_epochs=15.0,
      b1=0.9, b2=0.999, weight_decay=0.01, grad_clip=1.0, min_lr=1e-6))
  config.label_smoothing = 0.0
  config.log_every = 100
  config.eval_every = 5000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  config.async_checkpointing = True
  config.init_from = ""
  config.noise_every = 0  # > 0: log gradient-noise statistics (paper §4) every this many steps
  if arg.demo:
    # A small ViT on sklearn's 1797 real 8x8 digits, upsampled to 16x16 (16 patches of 4x4).
    config.data = ml_collections.ConfigDict(dict(name=arg.dataset or "digits", image_size=16,
                                                 data_dir=""))
    config.model.update(variant="Ti/4", width=64, depth=4, num_heads=4, mlp_dim=256,
                        pool_type="gap", drop_path=0.0)
    config.batch_size = 128
    config.eval_batch_size = 300
    config.total_steps = 3000
    config.total_epochs = 0.0
    config.optim.update(lr=2e-3, reference_batch=128, warmup_epochs=0.0, warmup_steps=150,
                        weight_decay=0.05)
    config.log_every = 250
    config.eval_every = 1000
    config.checkpoint_every = 1000
  else:
    config.data = ml_collections.ConfigDict(dict(name=arg.dataset or "imagenet2012",
                                                 image_size=224, data_dir=""))
    config.batch_size = 4096
    config.eval_batch_size = 1024
    config.total_steps = -1
    config.total_epochs = 350.0
  if arg.batch > 0:
    config.batch_size = arg.batch
  if arg.steps > 0:
    config.total_steps = arg.steps
  return config


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

  model_name = config.model.get("name")
  need(model_name in ("vit", "t5"), f"config.model.name={model_name!r}: 'vit' or 't5'")
  batch = config.get("batch_size")
  if not isinstance(batch, int) or batch <= 0:
    problems.append(f"config.batch_size={batch!r}: must be a positive int")
  else:
    need(batch % device_count == 0,
         f"config.batch_size={batch} is not divisible by the {device_count} devices")
    need(batch % process_count == 0,
         f"config.batch_size={batch} is not divisible by the {process_count} processes")
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
  need(optim.lr > 0, f"config.optim.lr={optim.lr!r}: must be > 0")
  need(optim.schedule in ("cosine", "constant"),
       f"config.optim.schedule={optim.schedule!r}: 'cosine' or 'constant'")
  need(0 <= optim.b1 < 1 and 0 <= optim.b2 < 1,
       f"config.optim.b1/b2=({optim.b1}, {optim.b2}): must be in [0, 1)")
  need(optim.weight_decay >= 0, f"config.optim.weight_decay={optim.weight_decay!r}: >= 0")
  if model_name == "vit":
    need(config.data.name in IMAGE_DATASETS,
         f"config.data.name={config.data.name!r}: one of {IMAGE_DATASETS}")
  try:
    from pgf.train import build_recipe  # pylint: disable=g-import-not-at-top
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


__all__ = ["parse_arg", "vit_config", "sparsity_config", "validate", "load", "apply_overrides"]
