"""ResNet (v1.5: the stride sits in the bottleneck's 3x3 conv) in Flax linen, for N:M conv kernels.

    model = ResNet(num_classes=10, stage_sizes=(3, 4, 6, 3), stem="cifar")   # ResNet-50, 32x32
    variables = model.init(rng, images, train=False)     # {"params": ..., "batch_stats": ...}
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])

Parameter paths are stable and short, so sparsity and sharding rules are plain regexes:

    stem_conv/kernel                      (7, 7, 3, W) ImageNet stem or (3, 3, 3, W) CIFAR stem
    stage_{s}/block_{b}/conv_{0,1,2}/kernel   1x1 -> 3x3 -> 1x1 bottleneck (HWIO)
    stage_{s}/block_{b}/proj/kernel       1x1 projection shortcut (first block of a stage)
    .../bn_{0,1,2}, .../proj_bn, stem_bn  BatchNorm scale/bias (params), mean/var (batch_stats)
    head/kernel                           the classifier (in, classes)

Conv kernels are HWIO, so the contracting dims are H, W and I: N:M groups along the input
channels are `axis=2`, groups over the flattened receptive field `axis=(0, 1, 2)`.

BatchNorm across devices. The repo trains with `jax.jit` over a batch sharded on the mesh: the
module sees the *global* batch as one array, so the batch mean and variance it computes are
already over every device (XLA inserts the all-reduce); no axis name is needed. `bn_axis_name` is
for code that runs the model per device (`jax.pmap`, or `jax.shard_map` with the batch axis
manual), where it names the mapped axis to average the statistics over.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

STEMS = ("imagenet", "cifar")


class Bottleneck(nn.Module):
  """1x1 (width) -> 3x3 (width, stride) -> 1x1 (4 * width), plus the (projected) input."""
  width: int
  strides: int
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    out = 4 * self.width
    y = nn.relu(self.norm(name="bn_0")(conv(self.width, (1, 1), name="conv_0")(x)))
    y = conv(self.width, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)), name="conv_1")(y)
    y = nn.relu(self.norm(name="bn_1")(y))
    y = conv(out, (1, 1), name="conv_2")(y)
    # Zero-initialised last scale: each block starts as the identity (Goyal et al., 2017).
    y = self.norm(name="bn_2", scale_init=nn.initializers.zeros)(y)
    if x.shape[-1] != out or self.strides != 1:
      x = conv(out, (1, 1), strides=self.strides, name="proj")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


class Stage(nn.Module):
  """`blocks` bottlenecks; the first one strides (and projects the shortcut)."""
  blocks: int
  width: int
  strides: int
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for b in range(self.blocks):
      x = Bottleneck(self.width, self.strides if b == 0 else 1, self.norm, self.dtype,
                     name=f"block_{b}")(x)
    return x


class ResNet(nn.Module):
  """Bottleneck ResNet; ResNet-50 by default.

  Attributes:
    num_classes: classifier outputs.
    stage_sizes: bottleneck blocks per stage ((3, 4, 6, 3) is ResNet-50).
    width: channels of the stem and of the first stage's bottleneck (64); stage s has
      width * 2**s, its blocks output 4x that.
    stem: "imagenet" (7x7 stride-2 conv and 3x3 stride-2 max-pool, for 224 px) or "cifar"
      (3x3 stride-1 conv, no pool, for 32 px).
    bn_momentum, bn_epsilon: BatchNorm running-average momentum and epsilon.
    bn_axis_name: the mapped axis to average batch statistics over under pmap/shard_map (None
      under jit, where the batch is global; see the module docstring).
    dtype: compute dtype (params stay float32).
  """
  num_classes: int
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  stem: str = "imagenet"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.stem not in STEMS:
      raise ValueError(f"ResNet.stem={self.stem!r}: one of {STEMS}")
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             axis_name=self.bn_axis_name, dtype=self.dtype)
    x = jnp.asarray(x, self.dtype)
    if self.stem == "imagenet":
      x = nn.Conv(self.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False,
                  dtype=self.dtype, name="stem_conv")(x)
    else:
      x = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  dtype=self.dtype, name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, blocks in enumerate(self.stage_sizes):
      x = Stage(blocks, self.width * 2**s, 1 if s == 0 else 2, norm, self.dtype,
                name=f"stage_{s}")(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
