"""Tasks: what the train loop needs to know about a model family and its data.

A task builds the model and its data sources from the config and defines the loss and the
evaluation metrics. The train loop (pgf/train.py) is shared by every task; models and data know
nothing about sparsity (the loop applies `pgf.sparsify` to the params before `apply`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pgf.data import mixup
from pgf.data.mixup import MixSpec
from pgf.task_base import Batch, Task, masked_mean  # noqa: F401  (Task is re-exported)


# --------------------------------------------------------------------------- classification
def vit_model(config, num_classes: int):
  """The ViT of `config.model` (no data needed: also for abstract params, e.g. size reports)."""
  from pgf.models import vit as vit_lib  # pylint: disable=g-import-not-at-top
  variant = vit_lib.decode_variant(config.model.variant)
  return vit_lib.ViT(
      num_classes=num_classes,
      pool_type=config.model.pool_type,
      dropout=config.model.dropout,
      attention_dropout=config.model.get("attention_dropout", 0.0),
      drop_path=config.model.drop_path,
      dtype=jnp.dtype(config.model.get("dtype", "float32")),
      **{k: config.model.get(k, v) for k, v in variant.items()})


def swin_model(config, num_classes: int):
  """The SwinV2 of `config.model` (pgf/models/swin.py; sizes from pgf/config_swin.py)."""
  from pgf import config_swin  # pylint: disable=g-import-not-at-top
  from pgf.models import swin as swin_lib  # pylint: disable=g-import-not-at-top
  return swin_lib.SwinV2(
      num_classes=num_classes, dropout=config.model.dropout,
      attention_dropout=config.model.get("attention_dropout", 0.0),
      drop_path=config.model.drop_path, dtype=jnp.dtype(config.model.get("dtype", "float32")),
      **config_swin.model_kwargs(config.model))


def resnet_model(config, num_classes: int):
  """The ResNet of `config.model` (pgf/models/resnet.py); no data needed."""
  from pgf.models import resnet as resnet_lib  # pylint: disable=g-import-not-at-top
  m = config.model
  return resnet_lib.ResNet(
      num_classes=num_classes, stage_sizes=tuple(m.stage_sizes), width=m.width, stem=m.stem,
      bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon,
      bn_axis_name=m.get("bn_axis_name") or None, dtype=jnp.dtype(m.get("dtype", "float32")))


def image_model(config, num_classes: int):
  """The image classifier of `config.model.name` ("vit", "swin" or "resnet")."""
  if config.model.name == "resnet":
    return resnet_model(config, num_classes)
  if config.model.name == "swin":
    return swin_model(config, num_classes)
  return vit_model(config, num_classes)


def classification_task(config, process_index: int = 0, process_count: int = 1) -> Task:
  """ViT, SwinV2 or ResNet image classification on digits (embedded), cifar10 or imagenet2012
  (TFDS).

  A ResNet's BatchNorm statistics are model state (`Task.init_model_state`): updated by every
  train step, used as running averages by eval."""
  train_source, eval_source = build_image_sources(config, process_index, process_count)
  model = image_model(config, train_source.num_classes)
  stateful = config.model.name == "resnet"
  size = train_source.image_size
  channels = getattr(train_source, "channels", 3)
  example = {"image": np.zeros((1, size, size, channels), np.uint8),
             "label": np.zeros((1,), np.int32), "valid": np.ones((1,), bool)}
  smoothing = config.get("label_smoothing", 0.0)
  loss_kind = config.get("loss", "softmax_xent")
  mix_spec = MixSpec(**config.mixup.to_dict()) if config.get("mixup") else MixSpec()
  num_classes = train_source.num_classes

  def pixels(images):
    # Sources ship uint8 (4x fewer bytes to the device); normalisation happens here, on device.
    if images.dtype == jnp.uint8:
      return mixup.normalize(images, train_source.mean, train_source.std)
    return images.astype(jnp.float32)

  def init_variables(rng):
    return model.init({"params": rng}, pixels(jnp.asarray(example["image"])), train=False)

  def init_fn(rng):
    return init_variables(rng)["params"]

  def init_model_state(rng):
    return {k: v for k, v in init_variables(rng).items() if k != "params"}

  def loss_fn(params, batch, rng, train, model_state=None):
    images = pixels(batch["image"])
    targets = mixup.soft_targets(batch["label"], num_classes, smoothing)
    if train and mix_spec.enabled:
      images, targets, _ = mixup.mix_batch(jax.random.fold_in(rng, 1), images, targets,
                                           mix_spec)
    rngs = {"dropout": rng} if train else None
    if model_state is None:
      logits = model.apply({"params": params}, images, train=train, rngs=rngs)
    elif train:  # BatchNorm normalises with batch statistics and updates the running ones
      logits, new_state = model.apply({"params": params, **model_state}, images, train=True,
                                      rngs=rngs, mutable=list(model_state))
    else:
      logits, new_state = model.apply({"params": params, **model_state}, images,
                                      train=False), model_state
    logits = logits.astype(jnp.float32)
    if loss_kind == "sigmoid_bce":
      losses = optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1)
    else:
      losses = optax.softmax_cross_entropy(logits, targets)
    valid = batch["valid"]
    correct = jnp.argmax(logits, -1) == batch["label"]
    metrics = {"accuracy": masked_mean(correct.astype(jnp.float32), valid)}
    if model_state is None:
      return masked_mean(losses, valid), metrics
    return masked_mean(losses, valid), (metrics, new_state)

  def eval_fn(params, batch, model_state=None):
    logits = model.apply({"params": params, **(model_state or {})}, pixels(batch["image"]),
                         train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             batch["label"])
    valid = batch["valid"].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"loss": jnp.sum(losses * valid), "accuracy": jnp.sum(correct * valid),
            "count": jnp.sum(valid)}

  return Task("classification", model, train_source, eval_source, example, "image", loss_fn,
              eval_fn, init_fn, init_model_state=init_model_state if stateful else None)


def build_image_sources(config, process_index: int, process_count: int):
  """(train source, eval source) for config.data.name."""
  data = config.data
  batch = config.batch_size
  eval_batch = config.get("eval_batch_size", batch)
  if data.name == "digits":
    from pgf.data.digits import DigitsSource  # pylint: disable=g-import-not-at-top
    source = DigitsSource(batch, config.seed, image_size=data.image_size,
                          process_index=process_index, process_count=process_count,
                          eval_global_batch_size=eval_batch)
    return source, source
  if data.name == "synthetic_imagenet":
    from pgf.data.synthetic import SyntheticImageSource  # pylint: disable=g-import-not-at-top
    source = SyntheticImageSource(batch, config.seed, image_size=data.image_size,
                                  process_index=process_index, process_count=process_count,
                                  eval_global_batch_size=eval_batch)
    return source, source
  from pgf.data.images import train_and_eval_sources  # pylint: disable=g-import-not-at-top
  workers = data.get("workers", -1)
  return train_and_eval_sources(
      data.name, data.get("data_dir") or None, batch, config.seed, data.image_size,
      process_index, process_count, train_split=data.get("train_split", "train"),
      eval_split=data.get("eval_split") or None, eval_global_batch_size=eval_batch,
      num_workers=None if workers < 0 else workers, prefetch=data.get("prefetch", 1),
      randaugment=data.get("randaugment") or None)


def num_train_examples(task: Task) -> int:
  return int(task.train_source.num_train)


def build_task(config, process_index: int = 0, process_count: int = 1) -> Task:
  if config.model.name in ("vit", "swin", "resnet"):
    return classification_task(config, process_index, process_count)
  if config.model.name == "t5":
    from pgf import text_tasks  # pylint: disable=g-import-not-at-top
    return text_tasks.seq2seq_task(config, process_index, process_count)
  if config.model.name == "gpt":
    from pgf import lm_family  # pylint: disable=g-import-not-at-top
    return lm_family.build_task(config, process_index, process_count)
  raise ValueError(f"config.model.name={config.model.name!r}: expected 'vit', 'swin', 'resnet', "
                   "'t5' or 'gpt'")
