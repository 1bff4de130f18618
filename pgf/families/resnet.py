"""The ResNet family (paper Table 6: ResNet-50 on CIFAR-10 with N:M conv kernels): its configs,
their checks, pgf/models/resnet.py and image classification with BatchNorm statistics.

    --config=configs/resnet50_1_8.py                      ResNet-50, CIFAR-10 (TFDS), MDGF-Exp
    --config=configs/resnet50_1_8.py:method=sr_ste,group=hwi
    --config=configs/resnet50_1_8.py:demo                 small ResNet on embedded digits (CPU)

Which kernels: every bottleneck conv (1x1, 3x3, 1x1) and every projection shortcut; the stem conv
(3 input channels) and the classifier stay dense, as usual for N:M CNNs. How they are grouped
(`:group=`): "in" groups M consecutive input channels of one tap and output channel (axis 2 of
the HWIO kernel, the layout sparse tensor cores accelerate), "hwi" groups the flattened
receptive field H*W*I of an output channel (axes (0, 1, 2)).
"""

from __future__ import annotations

import ml_collections

from pgf.families import image
from pgf.train import config_lib

RESNET_CONVS = r"stage_\d+/block_\d+/(conv_[012]|proj)/kernel"
GROUPS = {"in": 2, "hwi": (0, 1, 2)}
STEMS = ("imagenet", "cifar")
RESNET_DATASETS = ("digits", "cifar10", "imagenet2012", "synthetic_imagenet")
NAME = "resnet"
# Bottleneck and projection convs, HWIO: the input channels (the N:M groups' axis) split over
# "fsdp", the output channels over "model"; the stem (3 input channels) and BatchNorm fall
# through to FSDP when it divides.
SHARDING_RULES = ((r"stage_\d+/block_\d+/(conv_[012]|proj)/kernel$", "_,_,fsdp,model"),
                  (r".*", "fsdp"))


def resnet_rules(nm: str, group: str = "in"):
  if group not in GROUPS:
    raise ValueError(f"config arg group={group!r}: one of {sorted(GROUPS)}")
  return ((RESNET_CONVS, nm, GROUPS[group]),)


def rules(ff: str, qk: str | None = None, qkv: str | None = None, group: str = "in"):
  """The rules of a row at conv pattern `ff` (a ResNet has no attention: qk/qkv must be None)."""
  if qk or qkv:
    raise ValueError("a ResNet has no attention kernels: qk / qkv rules do not apply")
  return resnet_rules(ff, group)


def resnet_config(nm: str = "1:8", arg: str | None = None) -> ml_collections.ConfigDict:
  """ResNet-50 on CIFAR-10 with every bottleneck conv at `nm` (or the `:demo` twin on digits).

  `:arg` keys: demo, method, group ("in" or "hwi"), dataset, steps, seed, batch.
  """
  arg = config_lib.parse_arg(arg, demo=False, method="mdgf_exp", group="in", dataset="",
                             steps=-1, seed=0, batch=-1)
  config = ml_collections.ConfigDict()
  config.seed = arg.seed
  config.model = ml_collections.ConfigDict(dict(
      name="resnet", stage_sizes=(3, 4, 6, 3), width=64, stem="cifar", bn_momentum=0.9,
      bn_epsilon=1e-5, bn_axis_name="", dtype="float32"))
  config.sparsity = config_lib.sparsity_config(arg.method, resnet_rules(nm, arg.group))
  # The paper gives no CIFAR-10 recipe for Table 6; this is a plain AdamW one (the repo's
  # optimizer), 200 epochs of batch 256 with pad-crop-flip augmentation.
  config.optim = ml_collections.ConfigDict(dict(
      lr=2e-3, reference_batch=256, schedule="cosine", warmup_steps=-1, warmup_epochs=5.0,
      b1=0.9, b2=0.999, weight_decay=0.05, grad_clip=0.0, min_lr=1e-6))
  config.loss = "softmax_xent"
  config.label_smoothing = 0.0
  config_lib.add_run_fields(config, eval_every=5000, checkpoint_every=1000,
                            sharding_rules=SHARDING_RULES)
  if arg.demo:
    # A 4-stage bottleneck ResNet (one block per stage, width 16: 64..512 channels out) on
    # sklearn's 8x8 digits upsampled to 16x16, CIFAR stem; float32 on a CPU.
    config.data = ml_collections.ConfigDict(dict(name=arg.dataset or "digits", image_size=16,
                                                 data_dir="", randaugment="", workers=-1))
    config.model.update(stage_sizes=(1, 1, 1, 1), width=16)
    config.batch_size = 128
    config.eval_batch_size = 300
    config.total_steps = 600
    config.total_epochs = 0.0
    config.optim.update(lr=2e-3, reference_batch=128, warmup_epochs=0.0, warmup_steps=30,
                        weight_decay=0.05)
    config.log_every = 100
    config.eval_every = 300
    config.checkpoint_every = 300
  else:
    config.data = ml_collections.ConfigDict(dict(name=arg.dataset or "cifar10", image_size=32,
                                                 data_dir="", randaugment="", workers=-1,
                                                 prefetch=1))
    config.batch_size = 256
    config.eval_batch_size = 1000
    config.total_steps = -1
    config.total_epochs = 200.0
  return config_lib.apply_size_args(config, arg)


def problems(config) -> list[str]:
  """Every problem in the ResNet-only fields, each naming the field."""
  out = []
  model, data = config.model, config.data
  stages = model.get("stage_sizes")
  if (not isinstance(stages, (tuple, list)) or not stages
      or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in stages)):
    out.append(f"config.model.stage_sizes={stages!r}: a non-empty tuple of positive ints "
               "(ResNet-50: (3, 4, 6, 3))")
  width = model.get("width")
  if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
    out.append(f"config.model.width={width!r}: a positive int (ResNet-50: 64)")
  if model.get("stem") not in STEMS:
    out.append(f"config.model.stem={model.get('stem')!r}: one of {STEMS} ('cifar' for 32 px)")
  momentum = model.get("bn_momentum", 0.9)
  if not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
    out.append(f"config.model.bn_momentum={momentum!r}: must be in [0, 1)")
  epsilon = model.get("bn_epsilon", 1e-5)
  if not isinstance(epsilon, (int, float)) or epsilon <= 0:
    out.append(f"config.model.bn_epsilon={epsilon!r}: must be > 0")
  axis_name = model.get("bn_axis_name", "")
  if axis_name and not isinstance(axis_name, str):
    out.append(f"config.model.bn_axis_name={axis_name!r}: a mapped axis name, or '' under jit")
  if data.get("name") not in RESNET_DATASETS:
    out.append(f"config.data.name={data.get('name')!r}: one of {RESNET_DATASETS}")
  size = data.get("image_size")
  if not isinstance(size, int) or size < 8:
    out.append(f"config.data.image_size={size!r}: an int >= 8")
  return out + image.image_problems(config)


# ----------------------------------------------------------------------------- model and task
def resnet_model(config, num_classes: int):
  """The ResNet of `config.model` (pgf/models/resnet.py); no data needed."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pgf.models import resnet as resnet_lib  # pylint: disable=g-import-not-at-top
  m = config.model
  return resnet_lib.ResNet(
      num_classes=num_classes, stage_sizes=tuple(m.stage_sizes), width=m.width, stem=m.stem,
      bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon,
      bn_axis_name=m.get("bn_axis_name") or None, dtype=jnp.dtype(m.get("dtype", "float32")))


model = resnet_model


def build_task(config, process_index: int = 0, process_count: int = 1):
  """Image classification; the BatchNorm statistics are model state (`Task.init_model_state`):
  updated by every train step, used as running averages by eval."""
  from pgf.train import tasks  # pylint: disable=g-import-not-at-top
  return tasks.classification_task(config, process_index, process_count, model_fn=resnet_model)


def abstract_model(config):
  return image.abstract_model(config, resnet_model)


# ----------------------------------------------------------------------------- FLOPs, benchmark
def matmuls(config, **unused):
  """The convolutions (as im2col matmuls) and the head (pgf.analysis.flops.resnet_matmuls)."""
  from pgf.analysis import flops  # pylint: disable=g-import-not-at-top
  model_config, data = config.model, config.data
  return flops.resnet_matmuls(tuple(model_config.stage_sizes), int(model_config.width),
                              model_config.stem, int(data.image_size),
                              int(data.get("channels", 3)),
                              image.NUM_CLASSES.get(data.get("name"), 1000))


def flops_header(config, matmul_list, **unused):
  m = config.model
  return (f"ResNet (stages {tuple(m.stage_sizes)}, width {m.width}, {m.stem} stem) at "
          f"{config.data.image_size}px"), [("image", 1.0)]


def bench_inputs(config, batch: int, image_size: int = 0, variant: str = ""):
  """(init_fn, loss_fn, batch, description) of the config's ResNet on random images of the
  config's size (or `image_size`), 10 classes; BatchNorm in train mode."""
  del variant
  image_size = image_size or config.data.image_size
  init_fn, loss_fn, data = image.synthetic_classifier(resnet_model(config, 10), image_size,
                                                      batch, 10)
  m = config.model
  return (init_fn, loss_fn, data,
          f"stages {tuple(m.stage_sizes)} width {m.width}, batch {batch}, {image_size}px")
