"""The SwinV2 family (paper Table 3): configs/swin_*.py, pgf/models/swin.py, image classification.

  --config=configs/swin_1_16.py                      the paper's SwinV2-B ImageNet recipe
  --config=configs/swin_1_16.py:demo                 small SwinV2 on embedded digits (CPU, minutes)
  --config=configs/swin_1_16.py:method=sr_ste,variant=T

Where the defaults come from:
  * the paper (Table 3 and its hyper-parameter appendix): SwinV2-B (`swinv2_base_window16_256`:
    embed 128, depths 2-2-18-2, heads 4-8-16-32, window 16, 256 px, patch 4), batch 128 per
    device, 350 epochs, 20 warm-up epochs, FF (and Q/K) N:M rules, MDGF-Exp by default;
  * the global batch is 128 x 16 = 2048: the paper gives 128 per device, and its ViT runs used
    16 GPUs (the Swin device count is not stated);
  * everything else follows the authors' released timm configs as the ViT recipe does
    (pgf.families.vit.vit_config): AdamW(0.9, 0.999), lr 1e-3 at a reference batch of 4096 (scaled
    linearly, so 5e-4 at 2048), weight decay 0.01, grad clip 1.0, cosine schedule, sigmoid BCE
    on mixup-0.5 targets, RandAugment rand-m15-n2-p1-mstd0, dropout 0, drop-path 0.1, bf16
    compute. The authors' released `swin_v2_b_train.yaml` trains CIFAR-10 (its lr, epochs and
    warm-up are CIFAR values and are not taken); override any field with --config.X=...
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from pgf.families import image, vit
from pgf.train import config_lib

SWIN_FF = r"stages_\d+/blocks_\d+/mlp/fc[12]/kernel"
SWIN_QK = r"stages_\d+/blocks_\d+/attn/(query|key)/kernel"
SWIN_QKV = r"stages_\d+/blocks_\d+/attn/(query|key|value)/kernel"
SIZE_FIELDS = ("embed_dim", "depths", "num_heads")
NAME = "swin"
# Q/K/V/out and MLP kernels have the ViT layout and take the ViT rules. The position-bias MLP
# (attn/cpb_mlp, 2 -> 512 -> heads over a constant table) and per-head logit scale are tiny and
# read whole by every device; listed first so that "mlp/fc1/kernel$" does not split cpb_mlp/fc1
# Megatron-style.
SHARDING_RULES = ((r"attn/cpb_mlp/", "replicated"), (r"attn/logit_scale$", "replicated"),
                  *vit.SHARDING_RULES)
# The CPU demo model: 3 stages (8x8, 4x4, 2x2 tokens of 16x16 digits at patch 2), window 4, so
# stage 0 has shifted windows, stage 1 one whole-map window and stage 2 a window shrunk to 2.
DEMO_SIZES = dict(embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8))


def swin_rules(ff: str | None, qk: str | None = None, qkv: str | None = None):
  """Sparsity rules: FF at `ff`, plus Q/K (`qk`) or Q/K/V (`qkv`) at their patterns."""
  # Q/K/V kernels are (width, heads, head_dim): grouped along the input features, axis 0.
  return config_lib.transformer_rules(SWIN_FF, SWIN_QK, SWIN_QKV, ff, qk, qkv, attention_axis=0)


rules = swin_rules


def swin_config(ff: str | None = "1:16", qk: str | None = None, qkv: str | None = None,
                arg: str | None = None) -> ml_collections.ConfigDict:
  """The paper's SwinV2-B ImageNet-1k recipe (or its `:demo` twin) at the given patterns.

  `:arg` keys: demo, method, variant (T, S, B, L), dataset, steps, seed, batch.
  """
  arg = config_lib.parse_arg(arg, demo=False, method="mdgf_exp", variant="B", dataset="",
                             steps=-1, seed=0, batch=-1)
  # The shared image-classification fields (optimizer, loss, mixup, logging, sharding, data).
  base = ",".join(f"{k}={v}" for k, v in (("method", arg.method), ("seed", arg.seed)))
  if arg.dataset:
    base += f",dataset={arg.dataset}"
  config = vit.vit_config(ff=None, arg=base + (",demo" if arg.demo else ""))
  config.sparsity.rules = swin_rules(ff, qk, qkv)
  config.sharding_rules = SHARDING_RULES
  config.model = ml_collections.ConfigDict(dict(
      name="swin", variant=arg.variant, window_size=16, patch_size=4, mlp_ratio=4.0,
      dropout=0.0, attention_dropout=0.0, drop_path=0.1, dtype="bfloat16",
      embed_dim=config_dict.placeholder(int), depths=config_dict.placeholder(tuple),
      num_heads=config_dict.placeholder(tuple)))
  config_lib.add_memory_fields(config)
  if arg.demo:
    # Embed width 32, or the largest M of the row's rules (stage 0's FF input must hold a group).
    width = max([DEMO_SIZES["embed_dim"]]
                + [int(rule[1].split(":")[1]) for rule in config.sparsity.rules])
    config.model.update(variant="T", window_size=4, patch_size=2, drop_path=0.0,
                        dtype="float32", **{**DEMO_SIZES, "embed_dim": width})
    config.total_steps = 1000
    config.optim.update(warmup_steps=50)
    config.log_every = 250
    config.eval_every = 500
    config.checkpoint_every = 500
  else:
    config.data.image_size = 256
    config.batch_size = 128 * 16
    # At most 32 images per data-parallel chip per micro-batch (v4-8: 16 micro-batches, v5e-8:
    # 8, v4-32: 4): SwinV2-B's window attention at 256 px holds several times ViT-B's
    # activations per image (compiled without a TPU: docs/aot.md).
    config.device_micro_batch = 32
    config.total_epochs = 350.0
    config.optim.warmup_epochs = 20.0
  return config_lib.apply_size_args(config, arg)


def model_kwargs(model_config) -> dict:
  """SwinV2 constructor sizes: the variant's, with any embed_dim / depths / num_heads set."""
  from pgf.models import swin as swin_lib  # pylint: disable=g-import-not-at-top
  sizes = swin_lib.decode_variant(model_config.variant)
  for field in SIZE_FIELDS:
    if model_config.get(field) is not None:
      sizes[field] = model_config[field]
  sizes["depths"], sizes["num_heads"] = tuple(sizes["depths"]), tuple(sizes["num_heads"])
  return dict(sizes, window_size=model_config.window_size, patch_size=model_config.patch_size,
              mlp_ratio=model_config.get("mlp_ratio", 4.0))


def swin_problems(config) -> list[str]:
  """Problems in the SwinV2 fields (sizes, window / patch geometry) plus the image fields."""
  from pgf.models import swin as swin_lib  # pylint: disable=g-import-not-at-top
  problems = []
  model, data = config.model, config.data
  if data.get("name") not in image.IMAGE_DATASETS:
    problems.append(f"config.data.name={data.get('name')!r}: one of {image.IMAGE_DATASETS}")
  problems.extend(image.image_problems(config))
  if model.get("variant") not in swin_lib.VARIANTS:
    problems.append(f"config.model.variant={model.get('variant')!r}: one of "
                    f"{sorted(swin_lib.VARIANTS)}")
    return problems
  for field in ("window_size", "patch_size"):
    value = model.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      problems.append(f"config.model.{field}={value!r}: a positive int")
  embed = model.get("embed_dim")
  if embed is not None and (not isinstance(embed, int) or embed <= 0):
    problems.append(f"config.model.embed_dim={embed!r}: a positive int (or None for the variant's)")
  for field in ("depths", "num_heads"):
    value = model.get(field)
    if value is not None and (not isinstance(value, (tuple, list)) or not value or not all(
        isinstance(v, int) and v > 0 for v in value)):
      problems.append(f"config.model.{field}={value!r}: a non-empty tuple of positive ints, one "
                      "per stage (or None for the variant's)")
  for field in ("dropout", "attention_dropout", "drop_path"):
    value = model.get(field, 0.0)
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
      problems.append(f"config.model.{field}={value!r}: must be in [0, 1)")
  if problems:
    return problems
  sizes = model_kwargs(model)
  if len(sizes["depths"]) != len(sizes["num_heads"]):
    problems.append(f"config.model.depths={sizes['depths']} and config.model.num_heads="
                    f"{sizes['num_heads']}: need one entry per stage each")
    return problems
  for i, heads in enumerate(sizes["num_heads"]):
    width = sizes["embed_dim"] * 2 ** i
    if width % heads:
      problems.append(f"config.model.num_heads={sizes['num_heads']}: stage {i} width {width} "
                      f"(embed_dim * 2^{i}) is not divisible by {heads} heads")
  size, patch = data.get("image_size"), sizes["patch_size"]
  if not isinstance(size, int) or size <= 0 or size % patch:
    problems.append(f"config.data.image_size={size!r}: a positive multiple of "
                    f"config.model.patch_size={patch}")
  else:
    try:
      swin_lib.stage_geometry(size // patch, sizes["window_size"], len(sizes["depths"]))
    except ValueError as e:
      problems.append(f"config.model.window_size={sizes['window_size']} / config.data.image_size="
                      f"{size}: {e}")
  return problems


problems = swin_problems


# ----------------------------------------------------------------------------- model and task
def swin_model(config, num_classes: int):
  """The SwinV2 of `config.model` (pgf/models/swin.py; sizes from `model_kwargs`)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pgf.models import swin as swin_lib  # pylint: disable=g-import-not-at-top
  return swin_lib.SwinV2(
      num_classes=num_classes, dropout=config.model.dropout,
      attention_dropout=config.model.get("attention_dropout", 0.0),
      drop_path=config.model.drop_path, dtype=jnp.dtype(config.model.get("dtype", "float32")),
      remat=config.model.get("remat", "none"), **model_kwargs(config.model))


model = swin_model


def build_task(config, process_index: int = 0, process_count: int = 1):
  from pgf.train import tasks  # pylint: disable=g-import-not-at-top
  return tasks.classification_task(config, process_index, process_count, model_fn=swin_model)


def abstract_model(config):
  return image.abstract_model(config, swin_model)


# ----------------------------------------------------------------------------- FLOPs, benchmark
def matmuls(config, **unused):
  """The matmuls of the config's SwinV2 on one image (pgf.analysis.flops.swin_matmuls)."""
  from pgf.analysis import flops  # pylint: disable=g-import-not-at-top
  sizes = model_kwargs(config.model)
  data = config.data
  return flops.swin_matmuls(sizes, int(data.image_size), sizes["window_size"],
                            sizes["patch_size"], int(data.get("channels", 3)),
                            image.NUM_CLASSES.get(data.get("name"), 1000), sizes["mlp_ratio"])


def flops_header(config, matmul_list, **unused):
  embed = matmul_list[0]
  header = (f"SwinV2 {config.model.variant} at {config.data.image_size}px: {embed.rows} tokens "
            f"in stage 0, window {config.model.window_size}")
  return header, [("image", 1.0)]


def bench_inputs(config, batch: int, image_size: int = 0, variant: str = ""):
  """(init_fn, loss_fn, batch, description) of the config's SwinV2 (`variant` replaces the
  config's if it is one of T, S, B, L) on random images of the config's size, or `image_size`."""
  from pgf.models.swin import VARIANTS  # pylint: disable=g-import-not-at-top
  if variant in VARIANTS:
    config.model.variant = variant
  image_size = image_size or config.data.image_size
  init_fn, loss_fn, data = image.synthetic_classifier(swin_model(config, 1000), image_size,
                                                      batch, 1000)
  return init_fn, loss_fn, data, f"{config.model.variant}, batch {batch}, {image_size}px"


__all__ = ["SWIN_FF", "SWIN_QK", "SWIN_QKV", "swin_rules", "swin_config", "swin_problems",
           "model_kwargs", "swin_model"]
