"""Tests of the T5 v1.1 model: sizes, names, position buckets, masking, and a memorisation run."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pgf.models import t5


def _param_shapes(config, enc_len=8, dec_len=4):
  model = t5.T5(config)
  init = lambda: model.init(jax.random.key(0), jnp.ones((1, enc_len), jnp.int32), jnp.ones((1, dec_len), jnp.int32))
  shapes = jax.eval_shape(init)["params"]
  return {"/".join(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}


@pytest.mark.parametrize("variant,expected_millions", [("base", 247.6), ("small", 76.9)])
def test_parameter_count_matches_published_v1_1(variant, expected_millions):
  shapes = _param_shapes(t5.get_config(variant, vocab_size=32128))
  count = sum(int(np.prod(s)) for s in shapes.values())
  assert abs(count / 1e6 - expected_millions) / expected_millions < 0.01, count


def test_param_paths_and_kernel_shapes():
  config = t5.get_config("tiny", vocab_size=300)
  shapes = _param_shapes(config)
  emb, inner, mlp, heads = 64, 4 * 16, 128, 4
  expected = {
      "token_embedder/embedding": (300, emb),
      "encoder/relpos_bias/rel_embedding": (heads, 32),
      "decoder/relpos_bias/rel_embedding": (heads, 32),
      "encoder/encoder_norm/scale": (emb,),
      "decoder/decoder_norm/scale": (emb,),
      "decoder/logits_dense/kernel": (emb, 300),
  }
  for i in range(2):
    e, d = f"encoder/layers_{i}", f"decoder/layers_{i}"
    for norm in ("pre_attention_layer_norm", "pre_mlp_layer_norm"):
      expected[f"{e}/{norm}/scale"] = (emb,)
    for norm in ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm", "pre_mlp_layer_norm"):
      expected[f"{d}/{norm}/scale"] = (emb,)
    for attn in (f"{e}/attention", f"{d}/self_attention", f"{d}/encoder_decoder_attention"):
      for proj in ("query", "key", "value"):
        expected[f"{attn}/{proj}/kernel"] = (emb, inner)
      expected[f"{attn}/out/kernel"] = (inner, emb)
    for stack in (e, d):
      expected[f"{stack}/mlp/wi_0/kernel"] = (emb, mlp)
      expected[f"{stack}/mlp/wi_1/kernel"] = (emb, mlp)
      expected[f"{stack}/mlp/wo/kernel"] = (mlp, emb)
  assert shapes == expected
  ff = [p for p in shapes if re.fullmatch(r".*/mlp/(wi_0|wi_1|wo)/kernel", p)]
  qk = [p for p in shapes if re.fullmatch(r".*attention/(query|key)/kernel", p)]
  assert len(ff) == 3 * 4 and len(qk) == 2 * 6


def test_tied_embedding_has_no_logits_dense():
  shapes = _param_shapes(t5.get_config("tiny", vocab_size=300, logits_via_embedding=True))
  assert "decoder/logits_dense/kernel" not in shapes


@pytest.mark.parametrize("bidirectional,relative,expected", [
    # Bidirectional: 16 buckets per direction, 8 exact; keys after the query use ids 16..31.
    (True, [0, -1, -7, -8, -15, -16, -127, -128, -1000, 1, 7, 16, 128], [0, 1, 7, 8, 9, 10, 15, 15, 15, 17, 23, 26, 31]),
    # Causal: future keys -> 0; 16 exact buckets; 32 -> 16 + int(16 * log(2) / log(8)) = 21.
    (False, [5, 0, -1, -15, -16, -32, -64, -127, -128, -5000], [0, 0, 1, 15, 16, 21, 26, 31, 31, 31]),
])
def test_relative_position_bucket_hand_checked(bidirectional, relative, expected):
  buckets = t5.relative_position_bucket(np.array(relative), bidirectional=bidirectional)
  np.testing.assert_array_equal(np.asarray(buckets), expected)


@pytest.fixture(scope="module")
def tiny():
  # One jitted init shared by the tests: eager init compiles every initializer op separately (seconds).
  model = t5.T5(t5.get_config("tiny", vocab_size=50))
  params = jax.jit(model.init)(jax.random.key(1), jnp.ones((2, 8), jnp.int32), jnp.ones((2, 6), jnp.int32))
  return model, params["params"]


def _jit_apply(model):
  return jax.jit(model.apply, static_argnames=("train", "method"))


def test_causal_masking(tiny):
  model, params = tiny
  rng = np.random.default_rng(0)
  enc = rng.integers(3, 50, (2, 8))
  dec = rng.integers(3, 50, (2, 6))
  changed = dec.copy()
  changed[:, 4:] = (changed[:, 4:] + 7) % 47 + 3
  apply = _jit_apply(model)
  logits = apply({"params": params}, enc, dec)
  logits_changed = apply({"params": params}, enc, changed)
  np.testing.assert_allclose(logits[:, :4], logits_changed[:, :4], atol=1e-5)
  assert not np.allclose(logits[:, 4:], logits_changed[:, 4:])


def test_padding_does_not_change_real_positions(tiny):
  model, params = tiny
  rng = np.random.default_rng(1)
  enc = rng.integers(3, 50, (2, 5))
  dec = rng.integers(3, 50, (2, 4))
  enc_padded = np.concatenate([enc, np.zeros((2, 3), int)], axis=1)
  dec_padded = np.concatenate([dec, np.zeros((2, 2), int)], axis=1)
  apply = _jit_apply(model)
  encoded = apply({"params": params}, enc, method=t5.T5.encode)
  encoded_padded = apply({"params": params}, enc_padded, method=t5.T5.encode)
  np.testing.assert_allclose(encoded, encoded_padded[:, :5], atol=1e-5)
  logits = apply({"params": params}, enc, dec)
  logits_padded = apply({"params": params}, enc_padded, dec_padded)
  np.testing.assert_allclose(logits, logits_padded[:, :4], atol=1e-5)
  # A fully padded row (how eval batches are padded) must stay finite.
  enc_padded[1] = 0
  assert np.isfinite(apply({"params": params}, enc_padded, dec_padded)).all()


def test_shift_right():
  np.testing.assert_array_equal(t5.shift_right(jnp.array([[5, 6, 7, 1]])), [[0, 5, 6, 7]])


def test_dropout_is_active_only_in_training(tiny):
  _, params = tiny
  model = t5.T5(t5.get_config("tiny", vocab_size=50, dropout_rate=0.5))
  enc, dec = jnp.full((2, 8), 4), jnp.full((2, 6), 5)
  apply = _jit_apply(model)
  eval_a = apply({"params": params}, enc, dec)
  # An "rbg" key compiles much faster than threefry on CPU; the dropout semantics are the same.
  train = apply({"params": params}, enc, dec, train=True, rngs={"dropout": jax.random.key(3, impl="rbg")})
  np.testing.assert_allclose(eval_a, apply({"params": params}, enc, dec, train=False))
  assert not np.allclose(eval_a, train)


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny):
  model = t5.T5(t5.get_config("tiny", vocab_size=50, dtype=jnp.bfloat16))
  enc, dec = jnp.full((2, 8), 4), jnp.full((2, 6), 5)
  params = jax.eval_shape(model.init, jax.random.key(0), enc, dec)["params"]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = jax.jit(model.apply)({"params": tiny[1]}, enc, dec)
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()


def test_memorise_pairs_then_greedy_decode_reproduces_targets(tiny):
  model, params = tiny
  eos, target_len = 1, 6
  inputs = np.array([[5, 9, 12, 7, 1, 0], [20, 3, 3, 8, 30, 1]], np.int32)
  targets = np.array([[11, 12, 13, 14, 1, 0], [33, 17, 4, 1, 0, 0]], np.int32)
  tx = optax.adam(3e-3)

  def loss_fn(params):
    logits = model.apply({"params": params}, inputs, t5.shift_right(targets))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    weights = targets > 0
    return (ce * weights).sum() / weights.sum()

  @jax.jit
  def train(params):
    def step(carry, _):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=150)
    return params, losses

  params, losses = train(params)
  assert losses[-1] < 0.01, losses[-1]
  decode = jax.jit(functools.partial(t5.greedy_decode, model, max_len=target_len, eos_id=eos))
  np.testing.assert_array_equal(decode(params, inputs), targets)
