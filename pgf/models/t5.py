"""T5 v1.1 encoder-decoder in Flax linen, with t5x-style parameter names.

The model knows nothing about sparsity: pgf rewrites `variables["params"]` before `apply`, so what matters
here is that every weight has a stable, regex-friendly path and a 2-D kernel whose contracting axis is 0:

    token_embedder/embedding                                   (vocab, emb)
    encoder/relpos_bias/rel_embedding                          (heads, num_buckets)
    encoder/layers_{i}/pre_attention_layer_norm/scale          (emb,)
    encoder/layers_{i}/attention/{query,key,value}/kernel      (emb, heads*head_dim)
    encoder/layers_{i}/attention/out/kernel                    (heads*head_dim, emb)
    encoder/layers_{i}/pre_mlp_layer_norm/scale                (emb,)
    encoder/layers_{i}/mlp/{wi_0,wi_1}/kernel                  (emb, mlp)
    encoder/layers_{i}/mlp/wo/kernel                           (mlp, emb)
    encoder/encoder_norm/scale                                 (emb,)
    decoder/relpos_bias/rel_embedding                          (heads, num_buckets)
    decoder/layers_{i}/pre_self_attention_layer_norm/scale     (emb,)
    decoder/layers_{i}/self_attention/{query,key,value,out}/kernel
    decoder/layers_{i}/pre_cross_attention_layer_norm/scale    (emb,)
    decoder/layers_{i}/encoder_decoder_attention/{query,key,value,out}/kernel
    decoder/layers_{i}/pre_mlp_layer_norm/scale, decoder/layers_{i}/mlp/{wi_0,wi_1,wo}/kernel
    decoder/decoder_norm/scale                                 (emb,)
    decoder/logits_dense/kernel                                (emb, vocab)   only if not logits_via_embedding

So `r".*/mlp/(wi_0|wi_1|wo)/kernel"` selects the feed-forward and `r".*attention/(query|key)/kernel"` Q/K.

T5 conventions kept on purpose (Raffel et al. 2020; the v1.1 checkpoints of google-research/t5x):
pre-norm RMSNorm without bias or mean subtraction; no biases anywhere; attention logits are *not* divided
by sqrt(head_dim) -- the factor is folded into the query initialiser, so a loaded t5x checkpoint computes
the same function; relative-position biases with log-spaced buckets, one table per stack shared by all of
its layers; gated-GELU feed-forward; untied output projection (v1.1) unless `logits_via_embedding`.

Padding id 0 masks encoder keys. The decoder's start token is also 0, so decoder padding is *not* read
from the tokens: causal masking alone already keeps trailing padding from influencing real positions, and
the loss masks padded targets.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pgf.models import remat as remat_lib

Array = jax.Array
_MASK_VALUE = -1e10  # finite: a fully padded row (eval padding) gives uniform weights, not NaN.


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 v1.1 model. `dtype` is the computation dtype; params are float32."""

  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  dropout_rate: float = 0.0  # t5x's v1.1 pre-training value; fine-tuning configs typically use 0.1.
  logits_via_embedding: bool = False  # v1.1 unties the output projection.
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32
  remat: str = "none"  # "none" | "dots" | "block": rematerialised layers (pgf.models.remat)


# Sizes of the published v1.1 checkpoints (t5x gin files); "tiny" is for tests and CPU demos.
VARIANTS: dict[str, dict[str, int]] = {
    "tiny": dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                 num_encoder_layers=2, num_decoder_layers=2),
    "small": dict(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024,
                  num_encoder_layers=8, num_decoder_layers=8),
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048,
                 num_encoder_layers=12, num_decoder_layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816,
                  num_encoder_layers=24, num_decoder_layers=24),
}


def get_config(variant: str = "small", vocab_size: int = 32128, **overrides) -> T5Config:
  """Returns the `T5Config` of a named variant, e.g. `get_config("base", 32128, dropout_rate=0.1)`."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown T5 variant {variant!r}; choose one of {sorted(VARIANTS)}.")
  return T5Config(vocab_size=vocab_size, **{**VARIANTS[variant], **overrides})


def shift_right(targets: Array, start_token: int = 0) -> Array:
  """Teacher-forcing decoder inputs: targets shifted one step right, starting with `start_token`."""
  targets = jnp.asarray(targets)
  start = jnp.full_like(targets[..., :1], start_token)
  return jnp.concatenate([start, targets[..., :-1]], axis=-1)


def relative_position_bucket(relative_position, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128):
  """Maps `key_pos - query_pos` to a bucket id in [0, num_buckets) (T5's scheme).

  Small distances get their own bucket; larger ones share log-spaced buckets up to `max_distance`, beyond
  which everything falls into the last bucket. Bidirectional buckets spend half of the ids on keys after
  the query; causal ones map every future key to bucket 0 (it is masked anyway).
  """
  n = -jnp.asarray(relative_position, jnp.int32)
  ret = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # eps keeps log(0) out of the (discarded) small-distance branch.
  scaled = jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps) / np.log(max_distance / max_exact)
  val_if_large = max_exact + (scaled * (num_buckets - max_exact)).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


def _scaled_init(init, factor: float):
  return lambda key, shape, dtype=jnp.float32: init(key, shape, dtype) * factor


_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
_mlp_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no bias, no mean subtraction; statistics in float32."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (x32 * scale).astype(self.dtype)


class RelativePositionBias(nn.Module):
  """One (heads, buckets) table per stack, turned into an additive (1, heads, q, k) attention bias."""

  num_heads: int
  bidirectional: bool
  num_buckets: int = 32
  max_distance: int = 128

  @nn.compact
  def __call__(self, q_len: int, k_len: int) -> Array:
    rel_embedding = self.param("rel_embedding", nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                               (self.num_heads, self.num_buckets), jnp.float32)
    relative = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
    return rel_embedding[:, buckets][None]


class MultiHeadAttention(nn.Module):
  """Unscaled dot-product attention with 2-D projection kernels (contracting axis 0)."""

  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array, deterministic: bool) -> Array:
    inner = self.num_heads * self.head_dim
    dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)
    # T5 puts 1/sqrt(head_dim) into the query init instead of the logits.
    query = dense(inner, kernel_init=_scaled_init(_kernel_init, self.head_dim ** -0.5), name="query")(inputs_q)
    key = dense(inner, kernel_init=_kernel_init, name="key")(inputs_kv)
    value = dense(inner, kernel_init=_kernel_init, name="value")(inputs_kv)
    split = lambda x: x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
    query, key, value = split(query), split(key), split(value)
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, value).reshape(inputs_q.shape[:-1] + (inner,))
    return dense(inputs_q.shape[-1], kernel_init=_kernel_init, name="out")(out)


class MlpBlock(nn.Module):
  """Gated-GELU feed-forward: wo(gelu(x wi_0) * (x wi_1))."""

  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    dense = functools.partial(nn.Dense, use_bias=False, kernel_init=_mlp_init, dtype=self.dtype,
                              param_dtype=jnp.float32)
    hidden = nn.gelu(dense(self.mlp_dim, name="wi_0")(x)) * dense(self.mlp_dim, name="wi_1")(x)
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
    return dense(x.shape[-1], name="wo")(hidden)


def _sublayer(config: T5Config, name: str, fn, x: Array, deterministic: bool, *args) -> Array:
  """Pre-norm residual: x + dropout(fn(norm(x)))."""
  y = RMSNorm(config.layer_norm_epsilon, config.dtype, name=name)(x)
  y = fn(y, *args)
  return x + nn.Dropout(config.dropout_rate)(y, deterministic=deterministic)


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
    c = self.config
    attention = MultiHeadAttention(c.num_heads, c.head_dim, c.dropout_rate, c.dtype, name="attention")
    x = _sublayer(c, "pre_attention_layer_norm", lambda y: attention(y, y, bias, deterministic), x, deterministic)
    mlp = MlpBlock(c.mlp_dim, c.dropout_rate, c.dtype, name="mlp")
    return _sublayer(c, "pre_mlp_layer_norm", lambda y: mlp(y, deterministic), x, deterministic)


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_bias: Array, cross_bias: Array, deterministic: bool) -> Array:
    c = self.config
    self_attention = MultiHeadAttention(c.num_heads, c.head_dim, c.dropout_rate, c.dtype, name="self_attention")
    x = _sublayer(c, "pre_self_attention_layer_norm", lambda y: self_attention(y, y, self_bias, deterministic),
                  x, deterministic)
    cross = MultiHeadAttention(c.num_heads, c.head_dim, c.dropout_rate, c.dtype, name="encoder_decoder_attention")
    x = _sublayer(c, "pre_cross_attention_layer_norm", lambda y: cross(y, encoded, cross_bias, deterministic),
                  x, deterministic)
    mlp = MlpBlock(c.mlp_dim, c.dropout_rate, c.dtype, name="mlp")
    return _sublayer(c, "pre_mlp_layer_norm", lambda y: mlp(y, deterministic), x, deterministic)


def _padding_bias(key_tokens: Array) -> Array:
  """(b, 1, 1, k) additive bias that hides padding keys (id 0)."""
  return jnp.where(key_tokens > 0, 0.0, _MASK_VALUE).astype(jnp.float32)[:, None, None, :]


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, deterministic: bool) -> Array:
    c = self.config
    x = self.shared_embedding(tokens.astype(jnp.int32)).astype(c.dtype)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    length = tokens.shape[-1]
    relpos = RelativePositionBias(c.num_heads, True, c.relative_attention_num_buckets,
                                  c.relative_attention_max_distance, name="relpos_bias")
    bias = relpos(length, length) + _padding_bias(tokens)
    layer = remat_lib.wrap(EncoderLayer, c.remat, static_argnums=(3,))
    for i in range(c.num_encoder_layers):
      x = layer(c, name=f"layers_{i}")(x, bias, deterministic)
    x = RMSNorm(c.layer_norm_epsilon, c.dtype, name="encoder_norm")(x)
    return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, encoder_tokens: Array, decoder_tokens: Array, deterministic: bool) -> Array:
    c = self.config
    y = self.shared_embedding(decoder_tokens.astype(jnp.int32)).astype(c.dtype)
    y = nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    length = decoder_tokens.shape[-1]
    relpos = RelativePositionBias(c.num_heads, False, c.relative_attention_num_buckets,
                                  c.relative_attention_max_distance, name="relpos_bias")
    causal = np.tril(np.ones((length, length), bool))
    self_bias = relpos(length, length) + jnp.where(causal, 0.0, _MASK_VALUE)[None, None]
    cross_bias = _padding_bias(encoder_tokens)
    layer = remat_lib.wrap(DecoderLayer, c.remat, static_argnums=(5,))
    for i in range(c.num_decoder_layers):
      y = layer(c, name=f"layers_{i}")(y, encoded, self_bias, cross_bias, deterministic)
    y = RMSNorm(c.layer_norm_epsilon, c.dtype, name="decoder_norm")(y)
    y = nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    if c.logits_via_embedding:
      # Tied embeddings have unit-variance init; rescale so logits start O(1) (T5 v1.0 convention).
      logits = self.shared_embedding.attend(y) / jnp.sqrt(c.emb_dim).astype(c.dtype)
    else:
      logits = nn.Dense(c.vocab_size, use_bias=False, kernel_init=_mlp_init, dtype=c.dtype,
                        param_dtype=jnp.float32, name="logits_dense")(y)
    return logits.astype(jnp.float32)


class T5(nn.Module):
  """T5 v1.1. `__call__(encoder_input_tokens, decoder_input_tokens, train) -> float32 logits (b, Ld, vocab)`."""

  config: T5Config

  def setup(self):
    c = self.config
    self.token_embedder = nn.Embed(c.vocab_size, c.emb_dim, dtype=c.dtype, param_dtype=jnp.float32,
                                   embedding_init=nn.initializers.normal(stddev=1.0), name="token_embedder")
    self.encoder = Encoder(c, self.token_embedder, name="encoder")
    self.decoder = Decoder(c, self.token_embedder, name="decoder")

  def encode(self, encoder_input_tokens: Array, train: bool = False) -> Array:
    return self.encoder(encoder_input_tokens, deterministic=not train)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             train: bool = False) -> Array:
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens, deterministic=not train)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array, train: bool = False) -> Array:
    encoded = self.encode(encoder_input_tokens, train)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, train)


def greedy_decode(model: T5, params, encoder_input_tokens: Array, max_len: int, eos_id: int = 1) -> Array:
  """Greedy (argmax) decoding; returns int32 tokens (b, max_len), EOS included, zeros after it.

  Jit-friendly (`jax.jit(functools.partial(greedy_decode, model, max_len=..., eos_id=...))`): the encoder
  runs once, then a `lax.fori_loop` re-runs the full decoder on a fixed (b, max_len) buffer each step.
  That is O(max_len^2) work but needs no cache and matches `__call__` exactly, which is what evaluation of
  short classification targets needs.
  """
  variables = {"params": params}
  encoder_input_tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
  encoded = model.apply(variables, encoder_input_tokens, method=T5.encode)
  batch = encoder_input_tokens.shape[0]

  def step(t, state):
    decoder_inputs, outputs, done = state
    logits = model.apply(variables, encoded, encoder_input_tokens, decoder_inputs, method=T5.decode)
    token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False), axis=-1)
    token = jnp.where(done, 0, token).astype(jnp.int32)
    outputs = outputs.at[:, t].set(token)
    decoder_inputs = decoder_inputs.at[:, t + 1].set(token, mode="drop")
    return decoder_inputs, outputs, done | (token == eos_id)

  zeros = jnp.zeros((batch, max_len), jnp.int32)
  _, outputs, _ = jax.lax.fori_loop(0, max_len, step, (zeros, zeros, jnp.zeros((batch,), bool)))
  return outputs
