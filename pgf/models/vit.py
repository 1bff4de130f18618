"""Vision Transformer (Dosovitskiy et al., 2021) in Flax linen, with sparsity-friendly names.

The model knows nothing about sparsity. What it guarantees is a *stable parameter layout*, so that
sparsity rules are short regexes over "/"-joined paths of ``variables["params"]`` and mean the same
thing for every size::

    embedding/{kernel,bias}                      patch conv, kernel HWIO (p, p, C, width)
    cls                                          (1, 1, width), pool_type="tok" only
    pos_embedding                                (1, num_patches, width)
    encoder/encoderblock_{i}/ln1/{scale,bias}
    encoder/encoderblock_{i}/attn/{query,key,value}/kernel   (width, heads, head_dim), bias (heads, head_dim)
    encoder/encoderblock_{i}/attn/out/kernel                 (heads, head_dim, width), bias (width,)
    encoder/encoderblock_{i}/ln2/{scale,bias}
    encoder/encoderblock_{i}/mlp/fc1/kernel                  (width, mlp_dim), bias (mlp_dim,)
    encoder/encoderblock_{i}/mlp/fc2/kernel                  (mlp_dim, width), bias (width,)
    encoder/encoder_norm/{scale,bias}
    head/{kernel,bias}                                       (width, num_classes)

Q, K and V are separate parameters (not a fused qkv kernel) because the paper sparsifies Q/K and
Q/K/V as separate experiments. Every kernel contracts over its leading axis (axes (0, 1) for
``attn/out``), which is where an N:M mask groups elements. E.g. FF layers:
``r"encoder/encoderblock_\\d+/mlp/fc[12]/kernel"``; Q/K: ``r".*/attn/(query|key)/kernel"``.

Layout follows big_vision: the position embedding covers patches only and the class token is
prepended afterwards (one position fewer than the original release; ViT-B/16 has 86.57M params).
"""

from __future__ import annotations

import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pgf.models import remat as remat_lib

VARIANTS = {
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
}


def decode_variant(variant: str) -> dict[str, int]:
  """"B/16" -> dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16).

  Any positive integer patch size is accepted after the slash (4, 8 for small images; 16, 32 for
  ImageNet). A bare "B" gives the size fields without ``patch_size``.
  """
  match = re.fullmatch(r"(\w+?)(?:/(\d+))?", variant.strip())
  if not match or match.group(1) not in VARIANTS:
    raise ValueError(f"Unknown ViT variant {variant!r}; expected one of "
                     f"{sorted(VARIANTS)} optionally followed by '/<patch>', e.g. 'B/16'.")
  out = dict(VARIANTS[match.group(1)])
  if match.group(2) is not None:
    patch = int(match.group(2))
    if patch <= 0:
      raise ValueError(f"Patch size must be positive in {variant!r}.")
    out["patch_size"] = patch
  return out


def param_count(params: Any) -> int:
  """Number of scalars in a params pytree (arrays or ``jax.ShapeDtypeStruct`` from eval_shape)."""
  return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(params)))


class DropPath(nn.Module):
  """Stochastic depth: drops a whole residual branch per example, rescaling survivors."""

  rate: float

  @nn.compact
  def __call__(self, x, train: bool):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Attention(nn.Module):
  """Multi-head self-attention with separate query/key/value/out DenseGeneral parameters."""

  num_heads: int
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}.")
    head_dim = width // self.num_heads
    dense = lambda name: nn.DenseGeneral(  # noqa: E731
        (self.num_heads, head_dim), axis=-1, dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(), name=name)
    query, key, value = dense("query")(x), dense("key")(x), dense("value")(x)
    query = query * jnp.asarray(1.0 / math.sqrt(head_dim), query.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)
    # Softmax in float32: bf16 logits lose too much precision in exp/normalisation.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.attention_dropout)(weights, deterministic=not train)
    attended = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
    return nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype,
                           kernel_init=nn.initializers.xavier_uniform(), name="out")(attended)


class MlpBlock(nn.Module):
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    width = x.shape[-1]
    dense = lambda features, name: nn.Dense(  # noqa: E731
        features, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6), name=name)
    x = nn.gelu(dense(self.mlp_dim, "fc1")(x))
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    return dense(width, "fc2")(x)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)
    y = Attention(self.num_heads, self.attention_dropout, self.dtype, name="attn")(y, train)
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    x = x + DropPath(self.drop_path)(y, train)
    y = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
    y = MlpBlock(self.mlp_dim, self.dropout, self.dtype, name="mlp")(y, train)
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    return x + DropPath(self.drop_path)(y, train)


class Encoder(nn.Module):
  depth: int
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x, train: bool):
    block = remat_lib.wrap(EncoderBlock, self.remat, static_argnums=(2,))
    for i in range(self.depth):
      # Linearly increasing stochastic depth: 0 for the first block, drop_path for the last.
      rate = self.drop_path * i / max(self.depth - 1, 1)
      x = block(self.mlp_dim, self.num_heads, self.dropout, self.attention_dropout, rate,
                       self.dtype, name=f"encoderblock_{i}")(x, train)
    return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


class ViT(nn.Module):
  """Vision Transformer classifier.

  Attributes:
    num_classes: output logits.
    width, depth, mlp_dim, num_heads, patch_size: size (see ``VARIANTS``/``decode_variant``).
    pool_type: "tok" (class token) or "gap" (mean over patch tokens).
    dropout: rate after attention, inside and after the MLP, and on the embeddings.
    attention_dropout: rate on attention weights.
    drop_path: stochastic-depth rate of the last block, linearly increasing from 0.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32 and logits are float32.
    head_zero_init: zero the classifier so initial logits are 0 (stable start for fine-tuning).
    posemb: "learn" (only option; kept as a field so configs can name it).
    remat: rematerialisation of the encoder blocks, "none" | "dots" | "block"
      (`pgf.models.remat`).

  ``__call__(images, train)`` takes (B, H, W, C) images with H, W divisible by ``patch_size`` and
  returns (B, num_classes) float32 logits. Randomness (dropout, drop path) is drawn from the
  "dropout" RNG stream and only when ``train`` and a rate is positive, so eval needs no RNG.
  """

  num_classes: int
  width: int = 768
  depth: int = 12
  mlp_dim: int = 3072
  num_heads: int = 12
  patch_size: int = 16
  pool_type: str = "tok"
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  head_zero_init: bool = True
  posemb: str = "learn"
  remat: str = "none"

  @nn.compact
  def __call__(self, images, train: bool):
    if self.pool_type not in ("tok", "gap"):
      raise ValueError(f"pool_type must be 'tok' or 'gap', got {self.pool_type!r}.")
    if self.posemb != "learn":
      raise ValueError(f"Only posemb='learn' is implemented, got {self.posemb!r}.")
    p = self.patch_size
    if images.shape[1] % p or images.shape[2] % p:
      raise ValueError(f"Image size {images.shape[1:3]} is not divisible by patch_size {p}.")
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                name="embedding")(jnp.asarray(images, self.dtype))
    batch, h, w, _ = x.shape
    x = jnp.reshape(x, (batch, h * w, self.width))
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=1 / math.sqrt(self.width)),
                     (1, h * w, self.width))
    x = x + pos.astype(self.dtype)
    if self.pool_type == "tok":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width))
      x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (batch, 1, 1)), x], axis=1)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    x = Encoder(self.depth, self.mlp_dim, self.num_heads, self.dropout, self.attention_dropout,
                self.drop_path, self.dtype, self.remat, name="encoder")(x, train)
    x = x[:, 0] if self.pool_type == "tok" else jnp.mean(x, axis=1)
    head_init = nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
    logits = nn.Dense(self.num_classes, kernel_init=head_init, dtype=self.dtype, name="head")(x)
    return logits.astype(jnp.float32)
