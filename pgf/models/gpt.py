"""A GPT-style decoder-only language model in Flax linen, with a key/value cache for generation.

Like every pgf model it knows nothing about sparsity: pgf rewrites `variables["params"]` before
`apply`, and `pgf.deploy.intercept()` swaps the Dense layers' contraction for `nm_dot` when a kernel
is a compressed `NMKernel`. What matters here is that every weight has a stable, regex-friendly path
and a 2-D kernel whose contracting axis is 0:

    embed/embedding                              (vocab, emb)
    layers_{i}/pre_attention_norm/scale          (emb,)
    layers_{i}/attention/{query,key,value}/kernel (emb, heads*head_dim)
    layers_{i}/attention/out/kernel              (heads*head_dim, emb)
    layers_{i}/pre_mlp_norm/scale                (emb,)
    layers_{i}/mlp/{gate,up}/kernel              (emb, mlp)      SwiGLU (default)
    layers_{i}/mlp/down/kernel                   (mlp, emb)
    layers_{i}/mlp/{fc1,fc2}/kernel              (emb, mlp), (mlp, emb)   GELU MLP (mlp="gelu")
    final_norm/scale                             (emb,)
    lm_head/kernel                               (emb, vocab)    only if not tied_embeddings

So `r"layers_\\d+/mlp/(gate|up|down|fc1|fc2)/kernel"` selects the feed-forward kernels and
`r"layers_\\d+/attention/(query|key|value)/kernel"` Q/K/V (see `pgf/config_lm.py`).

Architecture. Pre-norm residual blocks (RMSNorm, no biases anywhere), rotary position embeddings
(RoPE, Su et al. 2021; the half-split "NeoX" layout) on queries and keys, causal softmax attention
scaled by 1/sqrt(head_dim), and a SwiGLU feed-forward (Shazeer 2020): down(silu(x gate) * (x up)).
SwiGLU is the default because it is the FF of the decoder LMs people prune to N:M today (LLaMA,
Mistral, Qwen ...): three FF matrices per layer whose rows and columns are exactly what an N:M rule
matches, so what pgf measures on this model transfers. At 8/3 of the width (rounded to a multiple of
256) it has the parameter count of GPT-2's 4x GELU MLP; `mlp="gelu"` gives that GPT-2 MLP for a
like-for-like GPT-2 comparison. Output logits are tied to the embedding by default (GPT-2).

Sizes (`VARIANTS`): "demo" (0.37M parameters with the byte vocabulary, a CPU demo), "small" (GPT-2
small's geometry: 12 layers, width 768, 12 heads; 124M parameters with GPT-2's 50,304-id padded
vocabulary), "medium" (24 layers, width 1024, 16 heads; 360M, near GPT-2 medium's 355M).

Generation. `__call__(tokens, decode=True)` reads and writes the "cache" collection: each attention
layer keeps keys and values of shape (batch, cache_length, heads, head_dim) and the next write
position. `init_cache(model, batch, length)` makes an empty cache, `generate(...)` prefills it with a
prompt in one call and then samples one token per call (greedy at temperature 0).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array
_MASK_VALUE = -1e10
MLP_KINDS = ("swiglu", "gelu")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Hyper-parameters of the decoder. `dtype` is the computation dtype; params are float32."""

  vocab_size: int = 50304
  emb_dim: int = 768
  num_heads: int = 12
  head_dim: int = 64
  mlp_dim: int = 2048
  num_layers: int = 12
  mlp: str = "swiglu"         # "swiglu" (gate, up, down) or "gelu" (fc1, fc2)
  tied_embeddings: bool = True
  dropout_rate: float = 0.0
  rope_base: float = 10000.0
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32


VARIANTS: dict[str, dict[str, Any]] = {
    "demo": dict(emb_dim=96, num_heads=3, head_dim=32, mlp_dim=256, num_layers=3),
    "small": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048, num_layers=12),
    "medium": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816, num_layers=24),
}
SIZE_FIELDS = ("emb_dim", "num_heads", "head_dim", "mlp_dim", "num_layers")


def get_config(variant: str = "small", vocab_size: int = 50304, **overrides) -> GPTConfig:
  """The `GPTConfig` of a named variant, e.g. `get_config("small", 50304, mlp="gelu",
  mlp_dim=3072)` for GPT-2 small's own MLP."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown GPT variant {variant!r}; choose one of {sorted(VARIANTS)}.")
  config = GPTConfig(vocab_size=vocab_size, **{**VARIANTS[variant], **overrides})
  if config.mlp not in MLP_KINDS:
    raise ValueError(f"mlp={config.mlp!r}: one of {MLP_KINDS}")
  if config.head_dim % 2:
    raise ValueError(f"head_dim={config.head_dim}: RoPE rotates pairs, it must be even")
  return config


def rope(x: Array, positions: Array, base: float = 10000.0) -> Array:
  """Rotary position embedding of x (b, L, heads, d) at integer `positions` (L,), in float32."""
  half = x.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None] * freq[None, :]        # (L, half)
  sin, cos = jnp.sin(angles)[None, :, None, :], jnp.cos(angles)[None, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., :half], x32[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


_init = nn.initializers.normal(stddev=0.02)  # GPT-2


def _residual_init(num_layers: int):
  # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 * layers).
  return nn.initializers.normal(stddev=0.02 / np.sqrt(2 * num_layers))


class RMSNorm(nn.Module):
  """Scale-only RMS normalisation; statistics in float32."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (x32 * scale).astype(self.dtype)


class CausalSelfAttention(nn.Module):
  """Multi-head causal attention with separate query/key/value kernels and a decode cache."""

  config: GPTConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool, decode: bool) -> Array:
    c = self.config
    b, length = x.shape[0], x.shape[1]
    inner = c.num_heads * c.head_dim
    dense = functools.partial(nn.Dense, use_bias=False, dtype=c.dtype, param_dtype=jnp.float32)
    split = lambda y: y.reshape(y.shape[:-1] + (c.num_heads, c.head_dim))
    query = split(dense(inner, kernel_init=_init, name="query")(x))
    key = split(dense(inner, kernel_init=_init, name="key")(x))
    value = split(dense(inner, kernel_init=_init, name="value")(x))
    if decode:
      # The cache's length is fixed by the call that creates it (`init_cache`).
      cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      start = index.value
      positions = start + jnp.arange(length, dtype=jnp.int32)
      query, key = rope(query, positions, c.rope_base), rope(key, positions, c.rope_base)
      cache_len = cached_key.value.shape[1]
      keys = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype),
                                          (0, start, 0, 0))
      values = jax.lax.dynamic_update_slice(cached_value.value,
                                            value.astype(cached_value.value.dtype),
                                            (0, start, 0, 0))
      if not self.is_initializing():
        cached_key.value, cached_value.value = keys, values
        index.value = start + length
      key_positions = jnp.arange(cache_len, dtype=jnp.int32)
      visible = key_positions[None, :] <= positions[:, None]                    # (L, cache_len)
      key, value = keys, values
    else:
      positions = jnp.arange(length, dtype=jnp.int32)
      query, key = rope(query, positions, c.rope_base), rope(key, positions, c.rope_base)
      visible = jnp.asarray(np.tril(np.ones((length, length), bool)))
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32) / np.sqrt(c.head_dim)
    logits = jnp.where(visible[None, None], logits, _MASK_VALUE)
    weights = jax.nn.softmax(logits, axis=-1).astype(c.dtype)
    weights = nn.Dropout(c.dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, value.astype(c.dtype)).reshape(b, length, inner)
    return dense(c.emb_dim, kernel_init=_residual_init(c.num_layers), name="out")(out)


class Mlp(nn.Module):
  """SwiGLU down(silu(x gate) * (x up)), or GPT-2's fc2(gelu(x fc1))."""

  config: GPTConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    dense = functools.partial(nn.Dense, use_bias=False, dtype=c.dtype, param_dtype=jnp.float32)
    out_init = _residual_init(c.num_layers)
    if c.mlp == "gelu":
      hidden = nn.gelu(dense(c.mlp_dim, kernel_init=_init, name="fc1")(x))
      return dense(c.emb_dim, kernel_init=out_init, name="fc2")(hidden)
    hidden = (nn.silu(dense(c.mlp_dim, kernel_init=_init, name="gate")(x))
              * dense(c.mlp_dim, kernel_init=_init, name="up")(x))
    return dense(c.emb_dim, kernel_init=out_init, name="down")(hidden)


class Block(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool, decode: bool) -> Array:
    c = self.config
    drop = nn.Dropout(c.dropout_rate)
    y = RMSNorm(c.layer_norm_epsilon, c.dtype, name="pre_attention_norm")(x)
    x = x + drop(CausalSelfAttention(c, name="attention")(y, deterministic, decode),
                 deterministic=deterministic)
    y = RMSNorm(c.layer_norm_epsilon, c.dtype, name="pre_mlp_norm")(x)
    return x + drop(Mlp(c, name="mlp")(y), deterministic=deterministic)


class GPT(nn.Module):
  """`__call__(tokens, train=False, decode=False) -> float32 logits (b, L, vocab)`; logits at
  position t predict token t + 1."""

  config: GPTConfig

  @nn.compact
  def __call__(self, tokens: Array, train: bool = False, decode: bool = False) -> Array:
    c = self.config
    embed = nn.Embed(c.vocab_size, c.emb_dim, embedding_init=_init, dtype=c.dtype,
                     param_dtype=jnp.float32, name="embed")
    x = embed(tokens.astype(jnp.int32))
    x = nn.Dropout(c.dropout_rate)(x, deterministic=not train)
    for i in range(c.num_layers):
      x = Block(c, name=f"layers_{i}")(x, not train, decode)
    x = RMSNorm(c.layer_norm_epsilon, c.dtype, name="final_norm")(x)
    if c.tied_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(c.vocab_size, use_bias=False, kernel_init=_init, dtype=c.dtype,
                        param_dtype=jnp.float32, name="lm_head")(x)
    return logits.astype(jnp.float32)


# ----------------------------------------------------------------------------- generation
def init_cache(model: GPT, batch: int, length: int):
  """An empty decode cache for `batch` sequences of up to `length` tokens (prompt + new)."""
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                             jnp.zeros((batch, length), jnp.int32),
                                             decode=True)["cache"])
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def decode_step(model: GPT, params, cache, tokens: Array):
  """(float32 logits (b, L, vocab), cache) after feeding `tokens` (b, L) at the cache's position."""
  logits, updates = model.apply({"params": params, "cache": cache}, tokens, decode=True,
                                mutable=["cache"])
  return logits, updates["cache"]


def sample_token(logits: Array, rng, temperature: float, top_k: int = 0) -> Array:
  """(b,) next tokens from (b, vocab) float32 logits: argmax at temperature 0, else a sample of
  softmax(logits / temperature), restricted to the `top_k` most likely tokens if top_k > 0."""
  if temperature <= 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def generate(model: GPT, params, prompt: Array, max_new_tokens: int, temperature: float = 0.0,
             rng=None, top_k: int = 0) -> Array:
  """(b, max_new_tokens) int32 tokens continuing `prompt` (b, P), decoded with the KV cache.

  The prompt fills the cache in one call; every further token is one call on a single position.
  Traceable: jit it with the model and the sizes bound (`jax.jit(functools.partial(generate,
  model, max_new_tokens=64))`), and trace it inside `pgf.deploy.intercept()` to decode with a
  compressed params tree. Tokens after an EOS are generated too; tokenizers stop at the first EOS.
  """
  if rng is None:
    rng = jax.random.key(0)
  batch, prompt_len = prompt.shape
  cache = init_cache(model, batch, prompt_len + max_new_tokens)
  logits, cache = decode_step(model, params, cache, prompt)
  first = sample_token(logits[:, -1], jax.random.fold_in(rng, 0), temperature, top_k)

  def step(carry, i):
    token, cache = carry
    logits, cache = decode_step(model, params, cache, token[:, None])
    nxt = sample_token(logits[:, -1], jax.random.fold_in(rng, i), temperature, top_k)
    return (nxt, cache), token

  (last, _), tokens = jax.lax.scan(step, (first, cache), jnp.arange(1, max_new_tokens))
  return jnp.concatenate([tokens.T, last[:, None]], axis=1)
