"""What the image-classification families (ViT, SwinV2, ResNet) share: their datasets, the checks
of the loss / mixup / precision / input-worker fields, the abstract model for deploy reports and
the synthetic benchmark inputs. Not a family itself (nothing registers it).
"""

from __future__ import annotations

IMAGE_DATASETS = ("digits", "cifar10", "imagenet2012", "synthetic_imagenet")
LOSSES = ("softmax_xent", "sigmoid_bce")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# Classes per dataset when no data is read (FLOPs counts); 1000 for anything else.
NUM_CLASSES = {"imagenet2012": 1000, "cifar10": 10, "digits": 10}


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


image_problems = _vit_problems


def abstract_model(config, model_fn):
  """(model, abstract params, example inputs) of an image config, without reading any data (a
  ResNet's BatchNorm statistics are not params and are left out)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pgf.data import digits, images  # pylint: disable=g-import-not-at-top
  dataset = config.data.name.split(":")[0].split("/")[0]
  classes = digits.NUM_CLASSES if dataset == "digits" else images.DATASETS[dataset].num_classes
  model = model_fn(config, classes)
  size = config.data.image_size
  inputs = (jnp.zeros((1, size, size, 3), jnp.float32),)
  params = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, *inputs,
                                             train=False)["params"])
  return model, params, inputs


def synthetic_classifier(model, image_size: int, batch: int, num_classes: int):
  """(init_fn, loss_fn, batch) for an image classifier on random images and labels.

  A model with BatchNorm runs it in train mode (batch statistics, as the train loop does); the
  updated running statistics are dropped, which leaves out only their few-kilobyte
  moving-average write."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  data = {"image": rng.normal(size=(batch, image_size, image_size, 3)).astype(np.float32),
          "label": rng.integers(0, num_classes, size=(batch,)).astype(np.int32)}
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), data["image"][:1],
                                                train=False))
  state = {k: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), v)
           for k, v in variables.items() if k != "params"}

  def init_fn(key):
    return model.init({"params": key}, data["image"][:1], train=False)["params"]

  def loss_fn(params, batch, key, train):
    if state:
      logits, _ = model.apply({"params": params, **state}, batch["image"], train=train,
                              mutable=list(state))
    else:
      logits = model.apply({"params": params}, batch["image"], train=train,
                           rngs={"dropout": key})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                           batch["label"]).mean()
    return loss, {}

  return init_fn, loss_fn, data
