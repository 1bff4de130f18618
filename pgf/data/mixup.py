"""On-device batch preprocessing: uint8 -> normalised floats, mixup / cutmix, soft targets.

These run inside the jitted train step, on the global batch, so the host ships uint8 pixels
(4x fewer bytes than float32) and never touches a float image. Randomness comes from the step's
JAX key, so a batch's mixing is a pure function of (seed, step) like everything else.

Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) in "batch" mode: one mixing coefficient
λ per batch, each example mixed with a partner from the same batch, targets mixed with the same
λ. With both enabled, CutMix is chosen with probability `switch_prob`; the whole operation
happens with probability `prob`.

Partners never cross a device. The batch is split into `shards` contiguous blocks (the trainer
uses the number of devices the batch is sharded over: `partner_shards`) and each block is
reversed, so example i of a block is mixed with the block's mirrored example. The batch is a
shuffled sample, so a partner from the same block is as random as one from anywhere in the
batch (the same distribution of pairs); the compiled step moves no image between devices, where
reversing the whole sharded batch compiled to collective-permutes of every image each step.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean, std, dtype=jnp.float32) -> jax.Array:
  """(x - mean) / std per channel; uint8 input is on the 0..255 scale like mean and std."""
  mean = jnp.asarray(mean, jnp.float32)
  inv_std = 1.0 / jnp.asarray(std, jnp.float32)
  return ((images.astype(jnp.float32) - mean) * inv_std).astype(dtype)


def soft_targets(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
  """One-hot float32 targets with label smoothing (off value smoothing / K)."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


@dataclasses.dataclass(frozen=True)
class MixSpec:
  """Mixup / CutMix settings (config.mixup). All zero alphas disable mixing."""
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  switch_prob: float = 0.5
  prob: float = 1.0

  @property
  def enabled(self) -> bool:
    return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

  def problems(self) -> list[str]:
    out = []
    for name in ("mixup_alpha", "cutmix_alpha"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or value < 0:
        out.append(f"config.mixup.{name}={value!r}: must be >= 0")
    for name in ("switch_prob", "prob"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not 0 <= value <= 1:
        out.append(f"config.mixup.{name}={value!r}: must be in [0, 1]")
    return out


def _cutmix_box(key: jax.Array, lam: jax.Array, height: int, width: int):
  """A box covering about (1 - lam) of the image, centred uniformly; returns the box mask
  (H, W) and the exact kept fraction (the λ that the targets use)."""
  cut = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = jnp.round(height * cut), jnp.round(width * cut)
  ky, kx = jax.random.split(key)
  cy = jax.random.randint(ky, (), 0, height).astype(jnp.float32)
  cx = jax.random.randint(kx, (), 0, width).astype(jnp.float32)
  top, bottom = jnp.clip(cy - cut_h / 2, 0, height), jnp.clip(cy + cut_h / 2, 0, height)
  left, right = jnp.clip(cx - cut_w / 2, 0, width), jnp.clip(cx + cut_w / 2, 0, width)
  rows = jnp.arange(height, dtype=jnp.float32)[:, None]
  cols = jnp.arange(width, dtype=jnp.float32)[None, :]
  inside = (rows >= jnp.floor(top)) & (rows < jnp.floor(bottom)) & (
      cols >= jnp.floor(left)) & (cols < jnp.floor(right))
  kept = 1.0 - jnp.mean(inside.astype(jnp.float32))
  return inside, kept


_SHARDS = contextvars.ContextVar("pgf_mixup_shards", default=1)


@contextlib.contextmanager
def partner_shards(shards: int):
  """Within the block, `mix_batch` calls without `shards` pick partners within `shards`
  contiguous blocks of the batch (the trainer: the number of devices its batch is split over)."""
  if not isinstance(shards, int) or shards < 1:
    raise ValueError(f"partner_shards: shards={shards!r} must be a positive int")
  token = _SHARDS.set(shards)
  try:
    yield
  finally:
    _SHARDS.reset(token)


def partners(x: jax.Array, shards: int) -> jax.Array:
  """x's rows reordered so row i holds its mixing partner: each of `shards` contiguous blocks
  of the leading axis reversed (the whole axis when it does not split evenly)."""
  b = x.shape[0]
  if shards <= 1 or b % shards:
    return x[::-1]
  blocks = x.reshape((shards, b // shards) + x.shape[1:])
  return blocks[:, ::-1].reshape(x.shape)


def mix_batch(key: jax.Array, images: jax.Array, targets: jax.Array, spec: MixSpec,
              shards: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixup / CutMix of a float image batch (B, H, W, C) and its soft targets (B, K).

  `shards`: partners come from the same one of this many contiguous blocks (module docstring);
  None: the `partner_shards` context's (1 outside one: the whole batch reversed).
  Returns (images, targets, lam). With mixing disabled (or not drawn, probability 1 - prob)
  the inputs come back unchanged and lam = 1. Targets still sum to 1 per example.
  """
  shards = _SHARDS.get() if shards is None else shards
  if not spec.enabled:
    return images, targets, jnp.float32(1.0)
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(key, 5)
  apply = jax.random.uniform(k_apply) < spec.prob
  use_cutmix = jnp.bool_(spec.mixup_alpha <= 0)
  if spec.cutmix_alpha > 0 and spec.mixup_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < spec.switch_prob
  lam_mix = (jax.random.beta(k_mix, spec.mixup_alpha, spec.mixup_alpha)
             if spec.mixup_alpha > 0 else jnp.float32(1.0))
  lam_cut = (jax.random.beta(k_cut, spec.cutmix_alpha, spec.cutmix_alpha)
             if spec.cutmix_alpha > 0 else jnp.float32(1.0))
  flipped = partners(images, shards)
  box, kept = _cutmix_box(k_box, lam_cut, images.shape[1], images.shape[2])
  cut_images = jnp.where(box[None, :, :, None], flipped, images)
  lam_mix = lam_mix.astype(images.dtype)
  mixed_images = lam_mix * images + (1 - lam_mix) * flipped
  lam = jnp.where(use_cutmix, kept, lam_mix.astype(jnp.float32))
  lam = jnp.where(apply, lam, 1.0)
  out = jnp.where(use_cutmix, cut_images, mixed_images)
  out = jnp.where(apply, out, images)
  mixed_targets = lam * targets + (1.0 - lam) * partners(targets, shards)
  return out, mixed_targets, lam
