"""The ViT family (paper Table 2): configs/vit_*.py, pgf/models/vit.py, image classification.

Each file in configs/ is a few lines: it calls `vit_config(...)` with the paper row's patterns
and forwards the `:arg` string, e.g.

  --config=configs/vit_1_16.py                      the paper's ViT-B/16 ImageNet recipe
  --config=configs/vit_1_16.py:demo                 small ViT on embedded digits (CPU, minutes)
  --config=configs/vit_1_16.py:method=sr_ste,variant=S/16
"""

from __future__ import annotations

import ml_collections

from pgf.families import image
from pgf.families.image import IMAGE_DATASETS, LOSSES, _vit_problems  # noqa: F401
from pgf.train import config_lib

NAME = "vit"
VIT_FF = r"encoder/encoderblock_\d+/mlp/fc[12]/kernel"
VIT_QK = r"encoder/encoderblock_\d+/attn/(query|key)/kernel"
VIT_QKV = r"encoder/encoderblock_\d+/attn/(query|key|value)/kernel"
# Megatron-style FF (fc1 column-, fc2 row-parallel) and attention split by heads; kernels are
# (in, out), Q/K/V (width, heads, head_dim). Everything else: FSDP when it divides.
SHARDING_RULES = (
    (r"mlp/fc1/kernel$", "fsdp,model"),
    (r"mlp/fc1/bias$", "model"),
    (r"mlp/fc2/kernel$", "model,fsdp"),
    (r"attn/(query|key|value)/kernel$", "fsdp,model,_"),
    (r"attn/(query|key|value)/bias$", "model,_"),
    (r"attn/out/kernel$", "model,_,fsdp"),
    (r".*", "fsdp"),
)


def vit_rules(ff: str | None, qk: str | None = None, qkv: str | None = None):
  """Sparsity rules: FF at `ff`, plus Q/K (`qk`) or Q/K/V (`qkv`) at their patterns."""
  # Q/K/V kernels are (width, heads, head_dim): grouped along the input features, axis 0.
  return config_lib.transformer_rules(VIT_FF, VIT_QK, VIT_QKV, ff, qk, qkv, attention_axis=0)


rules = vit_rules


def vit_config(ff: str | None = "1:16", qk: str | None = None, qkv: str | None = None,
               arg: str | None = None) -> ml_collections.ConfigDict:
  """The paper's ViT-B/16 ImageNet-1k recipe (or its `:demo` twin) at the given patterns."""
  arg = config_lib.parse_arg(arg, demo=False, method="mdgf_exp", variant="B/16", dataset="",
                             steps=-1, seed=0, batch=-1)
  config = ml_collections.ConfigDict()
  config.seed = arg.seed
  config.model = ml_collections.ConfigDict(dict(
      name="vit", variant=arg.variant, pool_type="tok", dropout=0.1, attention_dropout=0.0,
      drop_path=0.1, dtype="bfloat16"))
  config.sparsity = config_lib.sparsity_config(arg.method, vit_rules(ff, qk, qkv))
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
  config_lib.add_run_fields(config, eval_every=5000, checkpoint_every=1000,
                            sharding_rules=SHARDING_RULES)
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
    # Gradient accumulation that follows the slice: micro-batches of at most 128 images per
    # data-parallel chip (v4-8: 8 of them, v5e-8: 4, v4-32: 2, 32 chips and up: none), so
    # the paper's global batch fits every slice from a v4-8 or v5e-8 up without editing
    # (compiled without a TPU: docs/aot.md). Same global batch, same step count.
    config.device_micro_batch = 128
    config.total_steps = -1
    config.total_epochs = 350.0
  return config_lib.apply_size_args(config, arg)


def problems(config) -> list[str]:
  """Problems in the ViT config's own fields: the dataset and the image fields."""
  out = []
  if config.data.get("name") not in IMAGE_DATASETS:
    out.append(f"config.data.name={config.data.get('name')!r}: one of {IMAGE_DATASETS}")
  return out + _vit_problems(config)


# ----------------------------------------------------------------------------- model and task
def vit_model(config, num_classes: int):
  """The ViT of `config.model` (no data needed: also for abstract params, e.g. size reports)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pgf.models import vit as vit_lib  # pylint: disable=g-import-not-at-top
  variant = vit_lib.decode_variant(config.model.variant)
  return vit_lib.ViT(
      num_classes=num_classes,
      pool_type=config.model.pool_type,
      dropout=config.model.dropout,
      attention_dropout=config.model.get("attention_dropout", 0.0),
      drop_path=config.model.drop_path,
      dtype=jnp.dtype(config.model.get("dtype", "float32")),
      remat=config.model.get("remat", "none"),
      **{k: config.model.get(k, v) for k, v in variant.items()})


model = vit_model


def build_task(config, process_index: int = 0, process_count: int = 1):
  from pgf.train import tasks  # pylint: disable=g-import-not-at-top
  return tasks.classification_task(config, process_index, process_count, model_fn=vit_model)


def abstract_model(config):
  return image.abstract_model(config, vit_model)


# ----------------------------------------------------------------------------- FLOPs, benchmark
def matmuls(config, class_token: bool = False, **unused):
  """The matmuls of the config's ViT on one image (pgf.analysis.flops.vit_matmuls)."""
  from pgf.analysis import flops  # pylint: disable=g-import-not-at-top
  from pgf.models.vit import decode_variant  # pylint: disable=g-import-not-at-top
  model_config = config.model
  dims = decode_variant(model_config.variant)
  dims.update({k: model_config[k] for k in ("width", "depth", "mlp_dim", "num_heads",
                                            "patch_size") if k in model_config})
  if "patch_size" not in dims:
    raise ValueError(f"config.model.variant={model_config.variant!r}: needs a patch size, e.g. "
                     "'B/16'")
  data = config.data
  # Only a "tok" model has a class token; "gap" pools the patch tokens.
  class_token = class_token and model_config.get("pool_type", "tok") == "tok"
  return flops.vit_matmuls(dims, int(data.image_size), int(data.get("channels", 3)),
                           image.NUM_CLASSES.get(data.get("name"), 1000), class_token)


def flops_header(config, matmul_list, class_token: bool = False):
  """(header line, [(unit, divisor)]) of `python -m pgf.analysis.flops` for a ViT config."""
  model_config = config.model
  query = matmul_list[1]  # encoderblock_0/attn/query/kernel: rows = tokens, k = width
  if model_config.get("pool_type", "tok") != "tok":
    token_note = f"pool_type={model_config.pool_type!r}: no class token"
  else:
    token_note = ("class token counted" if class_token
                  else "class token not counted, as in the paper")
  header = (f"ViT {model_config.variant} (width {query.k}) at {config.data.image_size}px: "
            f"{query.rows} tokens ({token_note})")
  return header, [("image", 1.0)]


def bench_inputs(config, batch: int, image_size: int = 0, variant: str = ""):
  """(init_fn, loss_fn, batch, description) of the config's ViT (`variant`, if given, replaces
  the config's) on random 224 px images, or `image_size`."""
  if variant:
    config.model.variant = variant
  image_size = image_size or 224
  init_fn, loss_fn, data = image.synthetic_classifier(vit_model(config, 1000), image_size, batch,
                                                      1000)
  return init_fn, loss_fn, data, f"{config.model.variant}, batch {batch}, {image_size}px"
