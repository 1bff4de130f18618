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

from pgf.recipes import Recipe


VIT_FF = r"encoder/encoderblock_\d+/mlp/fc[12]/kernel"
VIT_QK = r"encoder/encoderblock_\d+/attn/(query|key)/kernel"
VIT_QKV = r"encoder/encoderblock_\d+/attn/(query|key|value)/kernel"
IMAGE_DATASETS = ("digits", "cifar10", "imagenet2012", "synthetic_imagenet")
LOSSES = ("softmax_xent", "sigmoid_bce")
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


def add_sharding(config, data: int = -1, fsdp: int = 1, model: int = 1, axis_types: str = "auto",
                 rules=None) -> ml_collections.ConfigDict:
  """Sets `config.mesh` and `config.sharding_rules` (see pgf/sharding.py); returns config.

  The default is data parallelism over every device. Override on the command line, e.g.
  `--config.mesh.fsdp=4 --config.mesh.data=-1` for FSDP within groups of 4 devices.
  """
  from pgf import sharding  # pylint: disable=g-import-not-at-top
  config.mesh = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, model=model,
                                               axis_types=axis_types))
  config.sharding_rules = tuple(tuple(rule) for rule in (rules or sharding.DEFAULT_RULES))
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


def vit_rules(ff: str | None, qk: str | None = None, qkv: str | None = None):
  rules = []
  if ff:
    rules.append((VIT_FF, ff))
  # Q/K/V kernels are (width, heads, head_dim): grouped along the input features, axis 0.
  if qkv:
    rules.append((VIT_QKV, qkv, 0))
  elif qk:
    rules.append((VIT_QK, qk, 0))
  return tuple(rules)


def vit_config(ff: str | None = "1:16", qk: str | None = None, qkv: str | None = None,
               arg: str | None = None) -> ml_collections.ConfigDict:
  """The paper's ViT-B/16 ImageNet-1k recipe (or its `:demo` twin) at the given patterns."""
  arg = parse_arg(arg, demo=False, method="mdgf_exp", variant="B/16", dataset="",
                  steps=-1, seed=0, batch=-1)
  config = ml_collections.ConfigDict()
  config.seed = arg.seed
  config.model = ml_collections.ConfigDict(dict(
      name="vit", variant=arg.variant, pool_type="tok", dropout=0.1, attention_dropout=0.0,
      drop_path=0.1, dtype="bfloat16"))
  config.sparsity = sparsity_config(arg.method, vit_rules(ff, qk, qkv))
  config.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, reference_batch=4096, schedule="cosine", warmup_steps=-1, warmup_epochs=15.0,
      b1=0.9, b2=0.999, weight_decay=0.01, grad_clip=1.0, min_lr=1e-6))
  # The authors' released timm config (vit_b_train.yaml): binary cross-entropy on mixup 0.5
  # targets (batch mode, no cutmix), no label smoothing, RandAugment rand-m15-n2-p1-mstd0,
  # dropout 0.1, drop-path 0.1, mixed precision. The demo overrides these below.
  config.loss = "sigmoid_bce"
  config.label_smoothing = 0.0
  config.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.5, cutmix_alpha=0.0,
                                                switch_prob=0.5, prob=1.0))
  config.log_every = 100
  config.eval_every = 5000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  config.async_checkpointing = True
  config.init_from = ""
  config.noise_every = 0  # > 0: log gradient-noise statistics (paper §4) every this many steps
  add_sharding(config)
  if arg.demo:
    # A small ViT on sklearn's 1797 real 8x8 digits, upsampled to 16x16 (16 patches of 4x4).
    config.data = ml_collections.ConfigDict(dict(name=arg.dataset or "digits", image_size=16,
                                                 data_dir="", randaugment="", workers=-1))
    # float32 on a CPU; plain softmax cross-entropy without mixup, which 8x8 digits do not need.
    # Width 64, or the largest M of the row's rules (1:128 needs 128 inputs per group).
    width = max([64] + [int(rule[1].split(":")[1]) for rule in config.sparsity.rules])
    config.model.update(variant="Ti/4", width=width, depth=4, num_heads=4, mlp_dim=4 * width,
                        pool_type="gap", drop_path=0.0, dropout=0.0, dtype="float32")
    config.loss = "softmax_xent"
    config.mixup.update(mixup_alpha=0.0)
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
    # workers=-1: one input worker process per host core (see pgf/data/images.py).
    config.data = ml_collections.ConfigDict(dict(name=arg.dataset or "imagenet2012",
                                                 image_size=224, data_dir="",
                                                 randaugment="rand-m15-n2-p1-mstd0", workers=-1,
                                                 prefetch=1))
    config.batch_size = 4096
    config.eval_batch_size = 1024
    config.total_steps = -1
    config.total_epochs = 350.0
  if arg.batch > 0:
    config.batch_size = arg.batch
  if arg.steps > 0:
    config.total_steps = arg.steps
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


def _vit_problems(config) -> list[str]:
  """Loss, mixing, precision and input-worker fields of an image config."""
  problems = []
  loss = config.get("loss", "softmax_xent")
  if loss not in LOSSES:
    problems.append(f"config.loss={loss!r}: one of {LOSSES}")
  smoothing = config.get("label_smoothing", 0.0)
  if not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
    problems.append(f"config.label_smoothing={smoothing!r}: must be in [0, 1)")
  if config.get("mixup") is not None:
    from pgf.data.mixup import MixSpec  # pylint: disable=g-import-not-at-top
    try:
      problems.extend(MixSpec(**config.mixup.to_dict()).problems())
    except TypeError as e:
      problems.append(f"config.mixup: {e}")
  dtype = config.model.get("dtype", "float32")
  if dtype not in COMPUTE_DTYPES:
    problems.append(f"config.model.dtype={dtype!r}: one of {COMPUTE_DTYPES} (params and "
                    "optimizer state stay float32; this is the compute dtype)")
  workers = config.data.get("workers", -1)
  if not isinstance(workers, int) or workers < -1:
    problems.append(f"config.data.workers={workers!r}: an int >= 0, or -1 for one per core")
  return problems


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
  need(model_name in ("vit", "t5", "swin", "resnet", "gpt"),
       f"config.model.name={model_name!r}: 'vit', 'swin', 'resnet', 't5' or 'gpt'")
  batch = config.get("batch_size")
  if not isinstance(batch, int) or batch <= 0:
    problems.append(f"config.batch_size={batch!r}: must be a positive int")
  else:
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
  from pgf import sharding  # pylint: disable=g-import-not-at-top
  problems.extend(sharding.config_problems(config, device_count))
  need(optim.lr > 0, f"config.optim.lr={optim.lr!r}: must be > 0")
  need(optim.schedule in ("cosine", "constant", "rsqrt"),
       f"config.optim.schedule={optim.schedule!r}: 'cosine', 'constant' or 'rsqrt'")
  need(0 <= optim.b1 < 1 and 0 <= optim.b2 < 1,
       f"config.optim.b1/b2=({optim.b1}, {optim.b2}): must be in [0, 1)")
  need(optim.weight_decay >= 0, f"config.optim.weight_decay={optim.weight_decay!r}: >= 0")
  if model_name == "vit":
    need(config.data.name in IMAGE_DATASETS,
         f"config.data.name={config.data.name!r}: one of {IMAGE_DATASETS}")
    problems.extend(_vit_problems(config))
  elif model_name == "t5":
    problems.extend(_t5_problems(config))
  elif model_name == "swin":
    from pgf.config_swin import swin_problems  # pylint: disable=g-import-not-at-top
    problems.extend(swin_problems(config))
  elif model_name == "gpt":
    from pgf import lm_family  # pylint: disable=g-import-not-at-top
    problems.extend(lm_family.problems(config))
  elif model_name == "resnet":
    from pgf import config_resnet  # pylint: disable=g-import-not-at-top
    problems.extend(config_resnet.problems(config))
    problems.extend(_vit_problems(config))
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


def _t5_problems(config) -> list[str]:
  """Problems in the T5-only fields (model sizes, text data, tokenizer, z-loss)."""
  from pgf.models.t5 import VARIANTS  # pylint: disable=g-import-not-at-top
  from pgf.text_tasks import dataset_kind  # pylint: disable=g-import-not-at-top
  problems = []
  model, data = config.model, config.data
  if model.get("variant") not in VARIANTS:
    problems.append(f"config.model.variant={model.get('variant')!r}: one of {sorted(VARIANTS)}")
  for field in T5_SIZE_FIELDS:
    value = model.get(field)
    if value is not None and (not isinstance(value, int) or value <= 0):
      problems.append(f"config.model.{field}={value!r}: a positive int (or None for the variant's)")
  vocab = model.get("vocab_size", 0)
  if not isinstance(vocab, int) or vocab < 0:
    problems.append(f"config.model.vocab_size={vocab!r}: an int >= 0 (0 = the tokenizer's, padded)")
  dropout = model.get("dropout_rate", 0.0)
  if not 0.0 <= dropout < 1.0:
    problems.append(f"config.model.dropout_rate={dropout!r}: must be in [0, 1)")
  try:
    dataset_kind(data.get("name"))
  except (ValueError, AttributeError) as e:
    problems.append(str(e))
  if not isinstance(data.get("input_length"), int) or data.input_length < 3:
    problems.append(f"config.data.input_length={data.get('input_length')!r}: an int >= 3")
  for field in ("target_length", "num_eval_examples"):
    value = data.get(field, 0)
    if not isinstance(value, int) or value < 0:
      problems.append(f"config.data.{field}={value!r}: an int >= 0 (0 = automatic / all)")
  for field in ("lines_per_example", "context_lines"):
    lines = data.get(field, 1)
    if not isinstance(lines, int) or lines < 1:
      problems.append(f"config.data.{field}={lines!r}: an int >= 1 (Shakespeare lines)")
  density, span = data.get("noise_density", 0.15), data.get("mean_noise_span_length", 3.0)
  if not isinstance(density, (int, float)) or not 0.0 < density < 1.0:
    problems.append(f"config.data.noise_density={density!r}: must be in (0, 1)")
  if not isinstance(span, (int, float)) or span < 1.0:
    problems.append(f"config.data.mean_noise_span_length={span!r}: must be >= 1")
  tokenizer = data.get("tokenizer", "byte")
  if not isinstance(tokenizer, str) or not tokenizer:
    problems.append(f"config.data.tokenizer={tokenizer!r}: 'byte' or a SentencePiece model path")
  z_loss = config.get("z_loss", 0.0)
  if not isinstance(z_loss, (int, float)) or z_loss < 0:
    problems.append(f"config.z_loss={z_loss!r}: a float >= 0")
  # WMT translation (paper Table 5): its messages replace the generic ones for the same field.
  from pgf.config_wmt import wmt_problems  # pylint: disable=g-import-not-at-top
  wmt = wmt_problems(config)
  fields = {p.split("=")[0] for p in wmt}
  return [p for p in problems if p.split("=")[0] not in fields] + wmt


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


# ----------------------------------------------------------------------------------------- T5
# Every attention kind (encoder self, decoder self, decoder cross) is sparsified for QK / QKV rows;
# the attention output projection, embeddings, relative-position tables and logits stay dense.
T5_FF = r"(encoder|decoder)/layers_\d+/mlp/(wi_0|wi_1|wo)/kernel"
T5_QK = (r"(encoder|decoder)/layers_\d+/(attention|self_attention|encoder_decoder_attention)/"
         r"(query|key)/kernel")
T5_QKV = (r"(encoder|decoder)/layers_\d+/(attention|self_attention|encoder_decoder_attention)/"
          r"(query|key|value)/kernel")
T5_SIZE_FIELDS = ("emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
                  "num_decoder_layers")
# The CPU demo model (pre-training and fine-tuning must agree for init_from): 1.05M params.
T5_DEMO_SIZES = dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256, num_encoder_layers=3,
                     num_decoder_layers=2)


def t5_rules(ff: str | None, qk: str | None = None, qkv: str | None = None):
  rules = []
  if ff:
    rules.append((T5_FF, ff))
  if qkv:
    rules.append((T5_QKV, qkv))
  elif qk:
    rules.append((T5_QK, qk))
  return tuple(rules)


def t5_config(ff: str | None = None, qk: str | None = None, qkv: str | None = None,
              arg: str | None = None, pretrain: bool = False) -> ml_collections.ConfigDict:
  """T5 v1.1: dense span-corruption pre-training (`pretrain=True`) or the paper's sparse GLUE
  fine-tuning at the given patterns (Table 4), or the `:demo` twin of either on Shakespeare.

  Fine-tuning starts from `config.init_from`, a pre-training workdir (its newest checkpoint's
  params).
  `:arg` keys: demo, method, variant, dataset, steps, seed, batch.
  """
  arg = parse_arg(arg, demo=False, method="dense" if pretrain else "sdgf_stepwise",
                  variant="base", dataset="", steps=-1, seed=0, batch=-1)
  config = ml_collections.ConfigDict()
  config.seed = arg.seed
  config.model = ml_collections.ConfigDict(dict(
      name="t5", variant=arg.variant, vocab_size=0, dropout_rate=0.0 if pretrain else 0.1,
      logits_via_embedding=False, dtype="float32",
      **{field: config_dict.placeholder(int) for field in T5_SIZE_FIELDS}))
  # The paper: "10k dense" steps before sparsifying beat "zero dense" for T5X (10% of 100k).
  config.sparsity = sparsity_config(arg.method, () if pretrain else t5_rules(ff, qk, qkv),
                                    dense_fraction=0.1)
  config.z_loss = 1e-4  # t5x's default
  config.log_every = 100
  config.eval_every = 5000
  config.checkpoint_every = 5000
  config.keep_checkpoints = 3
  config.async_checkpointing = True
  config.init_from = ""
  config.noise_every = 0
  add_sharding(config)
  config.total_epochs = 0.0
  data = dict(data_dir="", tokenizer="byte", num_extra_ids=100, target_length=0,
              num_eval_examples=0, eval_split="", tfds_name="", noise_density=0.15,
              mean_noise_span_length=3.0, lines_per_example=4,
              holdout="", context_lines=2)
  if pretrain:
    # T5's pre-training budget: 2^19 steps of 128 x 512 tokens, span corruption 512 -> 114.
    config.data = ml_collections.ConfigDict(dict(name=arg.dataset or "c4", input_length=512,
                                                 **data))
    config.data.num_eval_examples = 10_000
    config.batch_size = 128
    config.total_steps = 524_288
    config.optim = ml_collections.ConfigDict(dict(
        lr=1e-3, reference_batch=128, schedule="cosine", warmup_steps=10_000, warmup_epochs=0.0,
        b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0, min_lr=1e-5))
  else:
    # The paper's T5X GLUE fine-tuning: batch 128, 100k steps, constant lr 1e-3, 1k warm-up.
    config.data = ml_collections.ConfigDict(dict(name=arg.dataset or "glue", input_length=512,
                                                 **data))
    config.batch_size = 128
    config.total_steps = 100_000
    config.optim = ml_collections.ConfigDict(dict(
        lr=1e-3, reference_batch=128, schedule="constant", warmup_steps=1000, warmup_epochs=0.0,
        b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0, min_lr=0.0))
  config.eval_batch_size = 128
  if arg.demo:
    config.model.update(variant="tiny", **T5_DEMO_SIZES)
    config.data.num_eval_examples = 512
    config.batch_size = 32
    config.eval_batch_size = 128
    config.log_every = 50
    config.checkpoint_every = 500
    if pretrain:
      # ByT5's span corruption for bytes: density 0.15, mean span 20 (3 bytes is too short for
      # a byte-level model to learn much from in minutes; see ShakespeareSpanCorruption).
      config.data.update(name=arg.dataset or "shakespeare_spans", input_length=128,
                         mean_noise_span_length=20.0)
      config.total_steps = 1200
      config.eval_every = 400
      config.optim.update(lr=2e-3, reference_batch=32, warmup_steps=100)
    else:
      config.data.update(name=arg.dataset or "shakespeare_genre", input_length=192)
      config.model.dropout_rate = 0.0
      config.total_steps = 600
      config.eval_every = 300
      config.optim.update(lr=1e-3, reference_batch=32, warmup_steps=30)
  if arg.batch > 0:
    config.batch_size = arg.batch
  if arg.steps > 0:
    config.total_steps = arg.steps
  return config


__all__ = ["parse_arg", "vit_config", "t5_config", "sparsity_config", "validate", "load",
           "apply_overrides", "add_sharding"]
