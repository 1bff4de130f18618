"""SwinV2 (Liu et al., "Swin Transformer V2", CVPR 2022) in Flax linen, sparsity-friendly names.

The model knows nothing about sparsity; like pgf/models/vit.py it guarantees a stable parameter
layout so that N:M rules are short regexes over "/"-joined paths of ``variables["params"]``::

    patch_embed/proj/{kernel,bias}                         patch conv, HWIO (p, p, C, embed)
    patch_embed/norm/{scale,bias}
    stages_{i}/downsample/reduction/kernel                 (4 C_in, 2 C_in), no bias; i >= 1
    stages_{i}/downsample/norm/{scale,bias}
    stages_{i}/blocks_{j}/attn/{query,key,value}/kernel    (C, heads, head_dim)
    stages_{i}/blocks_{j}/attn/{query,value}/bias          (heads, head_dim); key has no bias
    stages_{i}/blocks_{j}/attn/logit_scale                 (heads,)
    stages_{i}/blocks_{j}/attn/cpb_mlp/fc1/{kernel,bias}   (2, 512)
    stages_{i}/blocks_{j}/attn/cpb_mlp/fc2/kernel          (512, heads)
    stages_{i}/blocks_{j}/attn/out/{kernel,bias}           (heads, head_dim, C)
    stages_{i}/blocks_{j}/norm1/{scale,bias}
    stages_{i}/blocks_{j}/mlp/fc1/{kernel,bias}            (C, 4 C)
    stages_{i}/blocks_{j}/mlp/fc2/{kernel,bias}            (4 C, C)
    stages_{i}/blocks_{j}/norm2/{scale,bias}
    norm/{scale,bias}
    head/{kernel,bias}

Q, K and V are separate DenseGeneral parameters shaped like the ViT's, so the FF / QK / QKV rules
and the sharding rules of ViT carry over (Q/K/V group along axis 0, the input features).

What makes it V2 rather than V1:
  * scaled cosine attention: cos(q, k) * exp(min(logit_scale, log 100)), a learnable scale per
    head (initialised to log 10);
  * log-spaced continuous position bias: a 2 -> 512 -> heads MLP over the window's relative
    offsets mapped to sign(x) log2(1 + 8|x| / (w - 1)) / 3, then 16 * sigmoid;
  * res-post-norm: x + LN(attn(x)) and x + LN(mlp(x)) (the norm before the residual add);
  * patch merging: concatenate each 2x2 neighbourhood, linear 4C -> 2C, then LayerNorm.

Shifted windows: odd blocks of a stage roll the feature map by half a window (cyclic shift) and
mask attention between tokens that were not neighbours before the roll. A stage whose feature
map is no larger than the window uses one window of the whole map and no shift (as SwinV2
does), so tiny images work. Otherwise the map side must be divisible by the window.

The stage-level downsampling sits at the start of stages 1..3 (``stages_{i}/downsample``).
SwinV2-B (window 16, 256 px, 1000 classes) has 87,918,816 parameters.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pgf.models.vit import DropPath, param_count  # noqa: F401  (param_count re-exported)
from pgf.models import remat as remat_lib

VARIANTS = {
    "T": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "S": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "B": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "L": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
CPB_HIDDEN = 512
MAX_LOGIT_SCALE = math.log(100.0)


def decode_variant(variant: str) -> dict[str, Any]:
  """"B" -> dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown SwinV2 variant {variant!r}; expected one of {sorted(VARIANTS)}")
  return dict(VARIANTS[variant])


def stage_geometry(tokens_per_side: int, window_size: int, num_stages: int):
  """[(feature-map side, window, shift of odd blocks)] per stage; ValueError if they don't fit."""
  out = []
  side = tokens_per_side
  for i in range(num_stages):
    if i:
      if side % 2:
        raise ValueError(f"stage {i}: a {side}x{side} feature map cannot be merged 2x2 "
                         f"(image_size / patch_size must be divisible by {2 ** (num_stages - 1)})")
      side //= 2
    window = min(window_size, side)
    if side % window:
      raise ValueError(f"stage {i}: the {side}x{side} feature map is not divisible by "
                       f"window_size={window_size}")
    out.append((side, window, window // 2 if side > window else 0))
  return out


def relative_coords_table(window: int) -> np.ndarray:
  """(2w-1, 2w-1, 2) log-spaced relative offsets, the input of the position-bias MLP."""
  offsets = np.arange(-(window - 1), window, dtype=np.float64) / max(window - 1, 1)
  table = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), axis=-1) * 8.0
  return (np.sign(table) * np.log2(np.abs(table) + 1.0) / np.log2(8.0)).astype(np.float32)


def relative_position_index(window: int) -> np.ndarray:
  """(w*w, w*w) index into the flattened (2w-1)^2 table for every query/key pair of a window."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  delta = coords[:, :, None] - coords[:, None, :] + (window - 1)
  return delta[0] * (2 * window - 1) + delta[1]


def shift_mask(side: int, window: int, shift: int) -> np.ndarray:
  """(windows, w*w, w*w) additive mask: 0 where two tokens of a shifted window were neighbours
  before the cyclic shift, -100 where the roll brought them together from opposite edges."""
  region = np.zeros((side, side), np.int32)
  bounds = ((0, side - window), (side - window, side - shift), (side - shift, side))
  label = 0
  for h0, h1 in bounds:
    for w0, w1 in bounds:
      region[h0:h1, w0:w1] = label
      label += 1
  ids = window_partition(region[None, :, :, None], window)[..., 0]  # (windows, w*w)
  return np.where(ids[:, :, None] != ids[:, None, :], -100.0, 0.0).astype(np.float32)


def window_partition(x, window: int):
  """(B, H, W, C) -> (B * H/w * W/w, w*w, C); works for numpy and jax arrays."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows, window: int, h: int, w: int):
  """Inverse of `window_partition`."""
  c = windows.shape[-1]
  x = windows.reshape(-1, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


class WindowAttention(nn.Module):
  """Scaled cosine attention within windows, with the continuous position bias."""

  num_heads: int
  window: int
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, train: bool):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}.")
    head_dim = width // self.num_heads
    dense = lambda name, bias=True: nn.DenseGeneral(  # noqa: E731
        (self.num_heads, head_dim), axis=-1, use_bias=bias, dtype=self.dtype, name=name)
    query, key, value = dense("query")(x), dense("key", bias=False)(x), dense("value")(x)
    # Cosine similarity in float32 (norms of bf16 vectors lose precision), scaled per head.
    normalize = lambda t: t.astype(jnp.float32) / jnp.maximum(  # noqa: E731
        jnp.linalg.norm(t.astype(jnp.float32), axis=-1, keepdims=True), 1e-12)
    logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(10.0)),
                             (self.num_heads,))
    scale = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))
    logits = jnp.einsum("bqhd,bkhd->bhqk", normalize(query), normalize(key))
    logits = logits * scale[:, None, None]
    table = jnp.asarray(relative_coords_table(self.window)).reshape(-1, 2)
    bias = CpbMlp(self.num_heads, name="cpb_mlp")(table)  # ((2w-1)^2, heads)
    index = relative_position_index(self.window).reshape(-1)
    n = self.window * self.window
    bias = 16.0 * jax.nn.sigmoid(bias[index].reshape(n, n, self.num_heads).transpose(2, 0, 1))
    logits = logits + bias[None]
    if mask is not None:
      windows = mask.shape[0]
      logits = logits.reshape(-1, windows, self.num_heads, n, n) + mask[None, :, None]
      logits = logits.reshape(-1, self.num_heads, n, n)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.attention_dropout)(weights, deterministic=not train)
    attended = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
    return nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out")(attended)


class CpbMlp(nn.Module):
  """The continuous position bias MLP: 2 -> 512 (ReLU) -> heads, the last without bias."""

  num_heads: int

  @nn.compact
  def __call__(self, coords):
    hidden = nn.relu(nn.Dense(CPB_HIDDEN, name="fc1")(coords))
    return nn.Dense(self.num_heads, use_bias=False, name="fc2")(hidden)


class MlpBlock(nn.Module):
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    width = x.shape[-1]
    x = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x), approximate=False)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    x = nn.Dense(width, dtype=self.dtype, name="fc2")(x)
    return nn.Dropout(self.dropout)(x, deterministic=not train)


class SwinBlock(nn.Module):
  """x + DropPath(LN(WindowAttention(x))), then x + DropPath(LN(MLP(x))) (res-post-norm)."""

  num_heads: int
  window: int
  shift: int
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    b, h, w, c = x.shape
    y = jnp.roll(x, (-self.shift, -self.shift), axis=(1, 2)) if self.shift else x
    mask = jnp.asarray(shift_mask(h, self.window, self.shift)) if self.shift else None
    y = window_partition(y, self.window)
    y = WindowAttention(self.num_heads, self.window, self.attention_dropout, self.dtype,
                        name="attn")(y, mask, train)
    y = window_reverse(y, self.window, h, w)
    if self.shift:
      y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
    y = nn.LayerNorm(dtype=self.dtype, name="norm1")(y)
    x = x + DropPath(self.drop_path)(y, train)
    y = MlpBlock(int(c * self.mlp_ratio), self.dropout, self.dtype, name="mlp")(x, train)
    y = nn.LayerNorm(dtype=self.dtype, name="norm2")(y)
    return x + DropPath(self.drop_path)(y, train)


class PatchMerging(nn.Module):
  """SwinV2 order: concatenate every 2x2 neighbourhood (4C), linear to 2C, then LayerNorm."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    x = x.reshape(b, h // 2, w // 2, 4 * c)
    x = nn.Dense(2 * c, use_bias=False, dtype=self.dtype, name="reduction")(x)
    return nn.LayerNorm(dtype=self.dtype, name="norm")(x)


class SwinV2(nn.Module):
  """SwinV2 image classifier.

  Attributes:
    num_classes: output logits.
    embed_dim, depths, num_heads: size (see ``VARIANTS``); stage i has width embed_dim * 2^i.
    window_size: attention window side in tokens (16 for the paper's swinv2_base_window16_256).
    patch_size: patch side in pixels (4).
    mlp_ratio: MLP hidden width / block width.
    dropout: rate inside and after the MLPs and on the patch embeddings.
    attention_dropout: rate on attention weights.
    drop_path: stochastic-depth rate of the last block, linearly increasing from 0 over all blocks.
    dtype: computation dtype; parameters stay float32 and logits are float32.
    head_zero_init: zero the classifier so initial logits are 0.
    remat: rematerialisation of the blocks, "none" | "dots" | "block" (`pgf.models.remat`).

  ``__call__(images, train)`` takes (B, H, W, C) square images and returns (B, num_classes).
  """

  num_classes: int
  embed_dim: int = 128
  depths: Sequence[int] = (2, 2, 18, 2)
  num_heads: Sequence[int] = (4, 8, 16, 32)
  window_size: int = 16
  patch_size: int = 4
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  head_zero_init: bool = True
  remat: str = "none"

  @nn.compact
  def __call__(self, images, train: bool):
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f"depths {tuple(self.depths)} and num_heads {tuple(self.num_heads)} "
                       "must have one entry per stage")
    p = self.patch_size
    if images.shape[1] != images.shape[2] or images.shape[1] % p:
      raise ValueError(f"Images must be square with a side divisible by patch_size={p}, got "
                       f"{images.shape[1:3]}.")
    geometry = stage_geometry(images.shape[1] // p, self.window_size, len(self.depths))
    x = PatchEmbed(self.embed_dim, p, self.dtype, name="patch_embed")(images)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    total, done = sum(self.depths), 0
    for i, (depth, heads, (_, window, shift)) in enumerate(
        zip(self.depths, self.num_heads, geometry)):
      x = SwinStage(depth, heads, window, shift, i > 0, self.mlp_ratio, self.dropout,
                    self.attention_dropout,
                    tuple(self.drop_path * (done + j) / max(total - 1, 1) for j in range(depth)),
                    self.dtype, self.remat, name=f"stages_{i}")(x, train)
      done += depth
    x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
    x = jnp.mean(x, axis=(1, 2))
    head_init = nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
    logits = nn.Dense(self.num_classes, kernel_init=head_init, dtype=self.dtype, name="head")(x)
    return logits.astype(jnp.float32)


class PatchEmbed(nn.Module):
  embed_dim: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                name="proj")(jnp.asarray(images, self.dtype))
    return nn.LayerNorm(dtype=self.dtype, name="norm")(x)


class SwinStage(nn.Module):
  depth: int
  num_heads: int
  window: int
  shift: int
  downsample: bool
  mlp_ratio: float
  dropout: float
  attention_dropout: float
  drop_paths: Sequence[float]
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x, train: bool):
    if self.downsample:
      x = PatchMerging(self.dtype, name="downsample")(x)
    block = remat_lib.wrap(SwinBlock, self.remat, static_argnums=(2,))
    for j in range(self.depth):
      x = block(self.num_heads, self.window, self.shift if j % 2 else 0, self.mlp_ratio,
                    self.dropout, self.attention_dropout, self.drop_paths[j], self.dtype,
                    name=f"blocks_{j}")(x, train)
    return x
