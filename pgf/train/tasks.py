"""Tasks: a model with its data, the unit the train loop is written against.

A task builds the model and its data sources from the config and defines the loss and the
evaluation metrics. Each family (pgf/families/) says which task it trains (`build_task`);
image classification lives here, T5's text-to-text tasks in text_tasks.py. The train loop
(pgf/train/loop.py) is shared by every task; models and data know nothing about sparsity (the loop applies `pgf.sparsify` to the params before `apply`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pgf.data import mixup
from pgf.data.mixup import MixSpec
from pgf.train.task_base import Batch, Task, masked_mean  # noqa: F401  (Task is re-exported)


# --------------------------------------------------------------------------- classification
def classification_task(config, process_index: int = 0, process_count: int = 1,
                        model_fn=None) -> Task:
  """Image classification on digits (embedded), cifar10 or imagenet2012 (TFDS) with the model
  `model_fn(config, num_classes)` (default: the family of `config.model.name`'s `model`).

  Variables besides the params (a ResNet's BatchNorm statistics) are model state
  (`Task.init_model_state`): updated by every train step, used as running averages by eval."""
  if model_fn is None:
    from pgf import families  # pylint: disable=g-import-not-at-top
    model_fn = families.of_config(config).model
  train_source, eval_source = build_image_sources(config, process_index, process_count)
  model = model_fn(config, train_source.num_classes)
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

  abstract = jax.eval_shape(init_variables, jax.random.key(0))  # traced once, kept by the task
  stateful = any(collection != "params" for collection in abstract)

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
              eval_fn, init_fn, init_model_state=init_model_state if stateful else None,
              abstract_params=abstract["params"])


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
  """The task of `config.model.name`'s family (pgf/families/)."""
  from pgf import families  # pylint: disable=g-import-not-at-top
  return families.of_config(config).build_task(config, process_index, process_count)
