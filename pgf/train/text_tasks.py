"""T5 text-to-text tasks for the shared train loop: span-corruption pre-training and fine-tuning.

`seq2seq_task(config)` returns a `pgf.train.tasks.Task` whose data comes from `config.data.name`:

  pre-training (T5 span corruption)   "c4" (TFDS c4/en), "shakespeare_spans" (embedded, CPU demo)
  fine-tuning (text-to-text labels)   "glue" (T5's GLUE mixture), "glue/<task>", "shakespeare_genre",
                                      "shakespeare_play" (embedded)
  fine-tuning (generation)            "shakespeare_next_line" (embedded; the CPU-scale T5 grid's task)
  translation (trained from scratch)  "wmt" (TFDS wmt17_translate/de-en, newstest2014; pgf/data/wmt.py)

The loss is token cross-entropy on the targets (teacher forcing), padding masked, plus t5x's z-loss
(`config.z_loss` * log(Z)^2 per token, which keeps the softmax normaliser near 1 and bf16 logits
stable). Evaluation reports, per token, `loss_per_token` and `token_accuracy`; per example,
`sequence_accuracy` (teacher-forced: every target token is the argmax, which is exactly when greedy
decoding reproduces the target); and for span corruption `bits_per_byte`: the model's cross-entropy
in bits on the target's text bytes alone (see `_text_token_weights` for why sentinels and EOS are
left out), next to `unigram_bits_per_byte`, the entropy of the byte histogram of the same targets --
the baseline any context-blind model is held to. Classification evals also greedy-decode the eval
split and report `exact_match` (per GLUE task and averaged for the mixture) next to
`majority_baseline`. Generation is scored like span corruption: `bits_per_byte` of the target text next
to its `unigram_bits_per_byte`. Translation reports `token_accuracy` (the WMT accuracy of the paper's
Table 5). With `config.data.bleu_examples` > 0, any dataset also greedy-decodes that many eval
examples (whole eval batches) and reports sacrebleu's corpus `bleu` of the detokenized outputs
against the detokenized targets.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pgf.train.task_base import Task

log = logging.getLogger(__name__)

SPAN_CORRUPTION_DATASETS = ("c4", "shakespeare_spans")
# and "glue/<task>" for each GLUE task
CLASSIFICATION_DATASETS = ("glue", "shakespeare_genre", "shakespeare_play")
GENERATION_DATASETS = ("shakespeare_next_line",)
TRANSLATION_DATASETS = ("wmt",)
VOCAB_MULTIPLE = 128  # T5 pads its 32100-id vocabulary to 32128 for efficient TPU matmuls


def dataset_kind(name: str) -> str:
  """"span_corruption" or "classification" for a `config.data.name`; ValueError otherwise."""
  from pgf.data.text import GLUE_TASKS  # pylint: disable=g-import-not-at-top
  if name in SPAN_CORRUPTION_DATASETS:
    return "span_corruption"
  if name in CLASSIFICATION_DATASETS or (name.startswith("glue/") and name[5:] in GLUE_TASKS):
    return "classification"
  if name in GENERATION_DATASETS:
    return "generation"
  if name in TRANSLATION_DATASETS:
    return "translation"
  known = (SPAN_CORRUPTION_DATASETS + CLASSIFICATION_DATASETS + GENERATION_DATASETS
           + TRANSLATION_DATASETS)
  raise ValueError(
      f"config.data.name={name!r}: a T5 dataset is one of {known} or glue/<task> "
      f"with <task> in {sorted(GLUE_TASKS)}")


def build_tokenizer(data_config):
  """`config.data.tokenizer`: "byte" (ByT5-style, no file) or a T5 SentencePiece model file."""
  from pgf.data import tokenizers  # pylint: disable=g-import-not-at-top
  spec = data_config.get("tokenizer", "byte")
  extra = data_config.get("num_extra_ids", 100)
  if spec == "byte":
    return tokenizers.ByteTokenizer(num_extra_ids=extra)
  if not spec or not os.path.isfile(spec):
    raise ValueError(f"config.data.tokenizer={spec!r}: 'byte' or the path of a T5 SentencePiece "
                     "model file (e.g. a local copy of "
                     "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model)")
  try:
    return tokenizers.SentencePieceTokenizer(spec, num_extra_ids=extra)
  except ImportError as e:
    raise ValueError(f"config.data.tokenizer={spec!r}: {e}") from e


def model_vocab_size(config, tokenizer) -> int:
  """`config.model.vocab_size`, or the tokenizer's rounded up to a multiple of 128 when it is 0."""
  size = config.model.get("vocab_size", 0) or 0
  if size and size < tokenizer.vocab_size:
    raise ValueError(f"config.model.vocab_size={size} is smaller than the tokenizer's "
                     f"{tokenizer.vocab_size} ids")
  return size or -(-tokenizer.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def build_text_source(config, tokenizer, process_index: int = 0, process_count: int = 1):
  """One source object serves both `train_batch` (train split) and `eval_batches` (eval split)."""
  from pgf.data import shakespeare, text  # pylint: disable=g-import-not-at-top
  data = config.data
  common = dict(global_batch_size=config.batch_size, seed=config.seed, tokenizer=tokenizer,
                input_length=data.input_length, target_length=data.get("target_length") or None,
                process_index=process_index, process_count=process_count,
                eval_global_batch_size=config.get("eval_batch_size") or config.batch_size)
  cap = data.get("num_eval_examples") or None
  data_dir = data.get("data_dir") or None
  noise = dict(noise_density=data.get("noise_density", 0.15),
               mean_noise_span_length=data.get("mean_noise_span_length", 3.0))
  if data.name == "shakespeare_spans":
    return shakespeare.ShakespeareSpanCorruption(split=data.get("eval_split") or "heldout",
                                                 num_eval_examples=cap, **noise, **common)
  if data.name in ("shakespeare_genre", "shakespeare_play"):
    return shakespeare.ShakespeareClassification(split=data.get("eval_split") or "heldout",
                                                 task=data.name[len("shakespeare_"):],
                                                 lines_per_example=data.get("lines_per_example", 4),
                                                 holdout=data.get("holdout") or None,
                                                 num_eval_examples=cap, **common)
  if data.name == "shakespeare_next_line":
    return shakespeare.ShakespeareNextLine(split=data.get("eval_split") or "heldout",
                                           context_lines=data.get("context_lines", 2),
                                           num_eval_examples=cap, **common)
  if data.name == "c4":
    return text.C4SpanCorruption(data_dir=data_dir, name=data.get("tfds_name") or "c4/en",
                                 eval_split=data.get("eval_split") or "validation",
                                 num_eval_examples=cap, **noise, **common)
  if data.name == "glue":
    return text.GlueMixture(data_dir=data_dir, **common)
  if data.name == "wmt":
    from pgf.data import wmt  # pylint: disable=g-import-not-at-top
    return wmt.WmtTranslation(
        data_dir=data_dir, train_name=data.get("tfds_name") or wmt.TRAIN_NAME,
        eval_name=data.get("eval_tfds_name") or wmt.EVAL_NAME,
        eval_split=data.get("eval_split") or wmt.EVAL_SPLIT,
        source_language=data.get("source_language", "en"),
        target_language=data.get("target_language", "de"), num_eval_examples=cap, **common)
  return text.GlueClassification(data.name[len("glue/"):], data_dir=data_dir,
                                 eval_split=data.get("eval_split") or None, **common)


# ----------------------------------------------------------------------------- pure functions
def token_losses(logits, targets, z_loss: float = 0.0):
  """Per-token cross-entropy (+ z_loss * logsumexp^2) in float32, shape of `targets`."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit + z_loss * jnp.square(log_z)


def token_accuracy_sums(logits, targets, weights):
  """(correct, tokens): weighted count of target tokens whose argmax is right, and their weight.

  The token accuracy of WMT (paper Table 5) and t5x: teacher-forced, over every real target token
  (EOS included, padding and padded eval rows excluded), pooled over the batch (not per sequence).
  """
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return jnp.sum(correct * weights), jnp.sum(weights)


def target_weights(batch):
  """1 on real target tokens (EOS included), 0 on padding and on padded eval rows."""
  return ((batch["targets"] > 0) & batch["valid"][:, None]).astype(jnp.float32)


def _text_token_weights(targets, weights, first_sentinel_id: int, eos_id: int):
  """Weights restricted to text tokens: sentinels and EOS carry the corruption's layout, not text.

  A target reads `<s0> span <s1> span ... EOS`; which sentinel comes next is known (they count
  up), so what its loss measures is where a span ends -- information about the random mask, not
  about the text. Bits per *text* byte are comparable with the text's unigram byte entropy;
  counting sentinels and EOS as bytes would flatter the model.
  """
  return weights * ((targets < first_sentinel_id) & (targets != eos_id)).astype(weights.dtype)


def unigram_entropy_bits(counts: np.ndarray) -> float:
  """Entropy in bits of the empirical distribution given by `counts`."""
  counts = np.asarray(counts, np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())


def _allgather_sum(values: np.ndarray) -> np.ndarray:
  """Sums host-side eval counts over processes (each process scores its own slice)."""
  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


# ----------------------------------------------------------------------------- the task
def seq2seq_task(config, process_index: int = 0, process_count: int = 1,
                 model_fn=None) -> Task:
  """T5 v1.1 on `config.data.name` (see module docstring) as a `pgf.train.tasks.Task`; the model
  is `model_fn(config, vocab_size)` (default: the family of `config.model.name`'s `model`)."""
  if model_fn is None:
    from pgf import families  # pylint: disable=g-import-not-at-top
    model_fn = families.of_config(config).model
  from pgf.data.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  from pgf.models import t5  # pylint: disable=g-import-not-at-top
  kind = dataset_kind(config.data.name)
  tokenizer = build_tokenizer(config.data)
  source = build_text_source(config, tokenizer, process_index, process_count)
  model = model_fn(config, model_vocab_size(config, tokenizer))
  if (kind != "span_corruption" and not config.get("init_from")
      and not config.get("train_from_scratch")):
    log.warning("config.init_from is empty: fine-tuning %s from a random init (the paper's "
                "protocol starts from a dense span-corruption pre-training workdir).",
                config.data.name)

  example = {"inputs": np.zeros((1, source.input_length), np.int32),
             "targets": np.zeros((1, source.target_length), np.int32), "valid": np.ones((1,), bool)}
  z_loss = float(config.get("z_loss", 0.0))
  text_unit = "byte" if isinstance(tokenizer, ByteTokenizer) else "piece"

  def logits_of(params, batch, rng=None, train=False):
    return model.apply({"params": params}, batch["inputs"], t5.shift_right(batch["targets"]),
                       train=train, rngs={"dropout": rng} if train else None)

  def init_fn(rng):
    return model.init({"params": rng}, example["inputs"], example["targets"], train=False)["params"]

  def loss_fn(params, batch, rng, train):
    logits = logits_of(params, batch, rng, train)
    weights = target_weights(batch)
    tokens = jnp.maximum(jnp.sum(weights), 1.0)
    loss = jnp.sum(token_losses(logits, batch["targets"], z_loss) * weights) / tokens
    correct, _ = token_accuracy_sums(logits, batch["targets"], weights)
    return loss, {"accuracy": correct / tokens}  # token accuracy

  def eval_fn(params, batch):
    logits = logits_of(params, batch)
    targets, weights = batch["targets"], target_weights(batch)
    losses = token_losses(logits, targets)  # no z-loss: eval reports the likelihood itself
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    valid = batch["valid"].astype(jnp.float32)
    all_correct = jnp.all((correct > 0) | (weights == 0), axis=-1).astype(jnp.float32)
    text = _text_token_weights(targets, weights, tokenizer.first_sentinel_id, tokenizer.eos_id)
    correct_tokens, tokens = token_accuracy_sums(logits, targets, weights)
    return {"loss_per_token": jnp.sum(losses * weights),
            "token_accuracy": correct_tokens, "tokens": tokens,
            "sequence_accuracy": jnp.sum(all_correct * valid), "count": jnp.sum(valid),
            f"bits_per_{text_unit}": jnp.sum(losses * text) / math.log(2),
            f"{text_unit}s": jnp.sum(text)}

  extra_evals = []
  if kind in ("span_corruption", "generation"):
    extra_evals.append(_unigram_eval(source, tokenizer, text_unit))
  elif kind == "classification":
    extra_evals.append(_decoding_eval(model, source, tokenizer))
  if config.data.get("bleu_examples", 0):
    extra_evals.append(_bleu_eval(model, source, tokenizer, config.data.bleu_examples))
  extra_eval = _merged(extra_evals)
  return Task("seq2seq", model, source, source, example, "inputs", loss_fn, eval_fn, init_fn,
              extra_eval)


def _merged(extra_evals):
  if not extra_evals:
    return None
  return lambda params: {k: v for fn in extra_evals for k, v in fn(params).items()}


def corpus_bleu(hypotheses, references) -> float:
  """sacrebleu's corpus BLEU (0-100; default 13a tokenization, as WMT reports) of detokenized text."""
  try:
    import sacrebleu  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("BLEU needs the sacrebleu package: `pip install sacrebleu`, or set "
                      "config.data.bleu_examples=0") from e
  return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def _allgather_rows(rows: np.ndarray) -> np.ndarray:
  """Every process's rows (same shape on each), concatenated in process order."""
  if jax.process_count() == 1:
    return rows
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = np.asarray(multihost_utils.process_allgather(rows))
  return gathered.reshape((-1,) + rows.shape[1:])


def _bleu_eval(model, source, tokenizer, num_examples: int):
  """extra_eval: greedy-decode the first eval batches (>= num_examples rows) and score BLEU.

  Every process decodes its own rows; the token ids are gathered so that every process scores the
  same corpus (BLEU is not a mean of per-process scores).
  """
  from pgf.models import t5  # pylint: disable=g-import-not-at-top
  decode = jax.jit(functools.partial(t5.greedy_decode, model, max_len=source.target_length,
                                     eos_id=tokenizer.eos_id))
  num_batches = -(-num_examples // source.eval_global_batch_size)

  def extra_eval(params) -> dict[str, float]:
    outputs, targets, valid = [], [], []
    for _, batch in zip(range(num_batches), source.eval_batches()):
      outputs.append(np.asarray(decode(params, batch["inputs"])))
      targets.append(batch["targets"])
      valid.append(batch["valid"])
    outputs, targets, valid = (_allgather_rows(np.concatenate(x))
                               for x in (outputs, targets, valid))
    hypotheses = [tokenizer.decode(row, render_sentinels=False) for row in outputs[valid]]
    references = [tokenizer.decode(row, render_sentinels=False) for row in targets[valid]]
    return {"bleu": corpus_bleu(hypotheses, references)}

  return extra_eval


def _unigram_eval(source, tokenizer, text_unit: str):
  """extra_eval for span corruption: the unigram entropy of the eval targets' text tokens.

  It does not depend on the params, so it is computed once and returned at every evaluation, next to
  the model's `bits_per_byte` on the very same tokens.
  """
  @functools.lru_cache(maxsize=1)
  def entropy() -> float:
    counts = np.zeros(tokenizer.vocab_size, np.int64)
    for batch in source.eval_batches():
      targets = batch["targets"][batch["valid"]]
      text = targets[(targets > 0) & (targets < tokenizer.first_sentinel_id)
                     & (targets != tokenizer.eos_id)]
      counts += np.bincount(text, minlength=tokenizer.vocab_size)
    return unigram_entropy_bits(_allgather_sum(counts))

  return lambda params: {f"unigram_bits_per_{text_unit}": entropy()}


def _decoding_eval(model, source, tokenizer):
  """extra_eval for classification: greedy-decode the eval split; exact match, majority baseline."""
  from pgf.models import t5  # pylint: disable=g-import-not-at-top
  decode = jax.jit(functools.partial(t5.greedy_decode, model, max_len=source.target_length,
                                     eos_id=tokenizer.eos_id))
  tasks = getattr(source, "tasks", None)  # the GLUE mixture scores every task separately

  def extra_eval(params) -> dict[str, float]:
    groups = len(tasks) if tasks else 1
    hits, totals = np.zeros(groups), np.zeros(groups)
    for batch in source.eval_batches():
      decoded = np.asarray(decode(params, batch["inputs"]))
      match = np.all(decoded == batch["targets"], axis=-1) & batch["valid"]
      group = batch["task"] if tasks else np.where(batch["valid"], 0, -1)
      np.add.at(hits, group[group >= 0], match[group >= 0])
      np.add.at(totals, group[group >= 0], 1)
    hits, totals = np.split(_allgather_sum(np.concatenate([hits, totals])), 2)
    accuracy = hits / np.maximum(totals, 1)
    out = {"exact_match": float(accuracy.mean() if tasks else accuracy[0]),
           "majority_baseline": majority_baseline(source)}
    for name, value in zip(tasks or (), accuracy):
      out[f"exact_match_{name}"] = float(value)
    return out

  return extra_eval


def majority_baseline(source) -> float:
  """Accuracy of always answering the most frequent label.

  The source's own `majority_class_accuracy()` where it has one (Shakespeare: the *training* split's
  majority genre, scored on the held-out plays). Otherwise the eval split's most frequent target, an
  upper bound on any constant answer (reading a large GLUE train split just for this costs minutes);
  for the GLUE mixture, that per task, averaged like `exact_match`.
  """
  if hasattr(source, "majority_class_accuracy"):
    return float(source.majority_class_accuracy())
  cache = getattr(source, "_majority_baseline", None)
  if cache is None:
    counts: dict[tuple[int, bytes], int] = {}
    for batch in _valid_rows(source.eval_batches()):
      for task, target in zip(batch["task"], batch["targets"]):
        key = (int(task), target.tobytes())
        counts[key] = counts.get(key, 0) + 1
    best, totals = {}, {}
    for (task, _), n in counts.items():
      best[task] = max(best.get(task, 0), n)
      totals[task] = totals.get(task, 0) + n
    cache = float(np.mean([best[t] / totals[t] for t in totals])) if totals else 0.0
    source._majority_baseline = cache  # pylint: disable=protected-access
  return cache


def _valid_rows(batches) -> Iterator[dict[str, Any]]:
  for batch in batches:
    valid = batch["valid"]
    task = batch["task"] if "task" in batch else np.zeros(len(valid), np.int32)
    yield {"task": task[valid], "targets": batch["targets"][valid]}
