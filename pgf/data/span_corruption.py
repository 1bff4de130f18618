"""T5 span corruption ("random spans" denoising, Raffel et al. 2020, Sec. 3.1.4) in NumPy.

Written from the published algorithm and matched to the conventions of t5's `random_spans_noise_mask`, so
that counts agree with the reference implementation exactly:

* `num_noise = round(float32(length) * float32(density))`, clipped to `[1, length - 1]`; `round` is
  round-half-to-even (what `tf.round` does) and the product is taken in float32 like the reference,
  which matters on ties such as length 30 (float32: 4.5000002 -> 5; float64 would give 4.5 -> 4).
* `num_spans = max(round(float32(num_noise) / mean_span_length), 1)`. Additionally capped at
  `num_nonnoise` (and `num_noise`) so every span is non-empty; the reference silently produces an
  empty span there, which never happens at density 0.15 for lengths >= 2.
* Spans alternate non-noise / noise, starting with non-noise; span lengths are a uniformly random
  composition of each count into `num_spans` positive parts. Hence the last token is always noise unless
  `random_roll=True` (t5's later option; off by default as in t5).
* Each noise span becomes one sentinel in the inputs, each non-noise span one sentinel in the targets;
  sentinel k is `<extra_id_k>` (= vocab_size - 1 - k) on both sides, and both sides get EOS appended.

Everything is deterministic given the `np.random.Generator`, which callers seed from (seed, step,
global example position) so batches are pure functions of the step.
"""

from __future__ import annotations

import numpy as np

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


def _round_f32(x) -> int:
  return int(np.round(np.float32(x)))


def num_noise_tokens_and_spans(length: int, noise_density: float = NOISE_DENSITY,
                               mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> tuple[int, int]:
  """The deterministic (num_noise_tokens, num_noise_spans) for a sequence of `length >= 2` tokens."""
  num_noise = _round_f32(np.float32(length) * np.float32(noise_density))
  num_noise = min(max(num_noise, 1), length - 1)
  num_spans = max(_round_f32(np.float32(num_noise) / np.float32(mean_noise_span_length)), 1)
  return num_noise, min(num_spans, num_noise, length - num_noise)


def _random_composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
  """Uniformly random split of `total` items into `parts` non-empty consecutive segments."""
  cuts = np.sort(rng.permutation(total - 1)[: parts - 1]) + 1
  return np.diff(np.concatenate([[0], cuts, [total]]))


def random_spans_noise_mask(length: int, noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                            rng: np.random.Generator | None = None, random_roll: bool = False) -> np.ndarray:
  """Boolean noise mask of shape (length,): alternating spans, non-noise first (see module docstring)."""
  if rng is None:
    raise ValueError("Pass an explicit np.random.Generator: the mask must be reproducible.")
  if noise_density == 0.0 or length == 0:
    return np.zeros(length, bool)
  padded_length = max(length, 2)  # the reference pads to 2 and truncates, so length 1 is never noise.
  num_noise, num_spans = num_noise_tokens_and_spans(padded_length, noise_density, mean_noise_span_length)
  noise_lengths = _random_composition(num_noise, num_spans, rng)
  nonnoise_lengths = _random_composition(padded_length - num_noise, num_spans, rng)
  span_lengths = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
  span_index = np.repeat(np.arange(2 * num_spans), span_lengths)
  mask = (span_index % 2 == 1)[:length]
  if random_roll:
    mask = np.roll(mask, rng.integers(length))
  return mask


def _spans_to_sentinels(tokens: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
  """Replaces each run of masked tokens by one sentinel (vocab_size - 1, vocab_size - 2, ...)."""
  starts = mask & ~np.concatenate([[False], mask[:-1]])
  sentinels = vocab_size - np.cumsum(starts)
  out = np.where(starts, sentinels, tokens)
  return out[~(mask & ~starts)]


def span_corrupt(tokens, rng: np.random.Generator, vocab_size: int, eos_id: int = 1,
                 noise_density: float = NOISE_DENSITY, mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                 num_extra_ids: int | None = None, random_roll: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Span-corrupts a 1-D token sequence; returns int32 (inputs, targets), both ending with EOS.

  Args:
    tokens: text ids, all below the sentinel range (checked).
    rng: the generator that fully determines the mask.
    vocab_size: tokenizer vocabulary size; sentinel k is `vocab_size - 1 - k` (T5 convention).
    eos_id: appended to both sides.
    noise_density, mean_noise_span_length: T5 defaults 0.15 and 3.0.
    num_extra_ids: number of sentinels available; an error if more spans are needed. None: unchecked.
    random_roll: roll the mask by a random offset (removes the always-noise last token).

  Example: "We hold X to be Y that" -> targets "X these truths Y self evident Z" (X, Y, Z sentinels).
  """
  tokens = np.asarray(tokens, np.int32).reshape(-1)
  mask = random_spans_noise_mask(tokens.size, noise_density, mean_noise_span_length, rng, random_roll)
  if num_extra_ids is not None:
    if tokens.size and tokens.max() >= vocab_size - num_extra_ids:
      raise ValueError("Text ids collide with sentinel ids; tokenizer and vocab_size disagree.")
    num_spans = int(np.count_nonzero(np.diff(mask.astype(np.int8), prepend=0) == 1))
    if num_spans > num_extra_ids:
      raise ValueError(f"{num_spans} noise spans need more than num_extra_ids={num_extra_ids} sentinels.")
  inputs = _spans_to_sentinels(tokens, mask, vocab_size)
  targets = _spans_to_sentinels(tokens, ~mask, vocab_size)
  eos = np.array([eos_id], np.int32)
  return np.concatenate([inputs, eos]).astype(np.int32), np.concatenate([targets, eos]).astype(np.int32)


def reconstruct(inputs, targets, vocab_size: int, num_extra_ids: int, eos_id: int = 1) -> np.ndarray:
  """Inverse of `span_corrupt`: fills each input sentinel with the target span that follows it."""
  first_sentinel = vocab_size - num_extra_ids

  def until_eos(x):
    x = np.asarray(x).reshape(-1)
    stop = np.flatnonzero(x == eos_id)
    return x[: stop[0]] if stop.size else x

  spans, current = {}, None
  for token in until_eos(targets).tolist():
    if token >= first_sentinel:
      current = spans.setdefault(token, [])
    elif current is not None:
      current.append(token)
  out = []
  for token in until_eos(inputs).tolist():
    out.extend(spans.get(token, []) if token >= first_sentinel else [token])
  return np.asarray(out, np.int32)


def random_spans_helper(inputs_length: int, noise_density: float = NOISE_DENSITY,
                        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> tuple[int, int]:
  """Raw token count whose corruption fills `inputs_length` exactly, and the resulting targets length.

  Inputs hold the non-noise tokens, one sentinel per span and EOS; targets the noise tokens, one sentinel
  per span and EOS. T5's C4 setting: `random_spans_helper(512) == (568, 114)`.
  """
  def lengths(tokens_length):
    num_noise, num_spans = num_noise_tokens_and_spans(tokens_length, noise_density, mean_noise_span_length)
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

  if inputs_length < 3:
    raise ValueError(f"inputs_length={inputs_length} leaves no room for text, a sentinel and EOS.")
  tokens_length = max(inputs_length - 1, 2)
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  return tokens_length, lengths(tokens_length)[1]
