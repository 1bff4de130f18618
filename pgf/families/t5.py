"""The T5 family (paper Table 4): configs/t5_*.py, pgf/models/t5.py, text-to-text tasks.

T5 v1.1: dense span-corruption pre-training and sparse GLUE fine-tuning, or their `:demo` twins on
embedded Shakespeare (pgf/train/text_tasks.py has the tasks and their data).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from pgf.train import config_lib

NAME = "t5"
# The same split as the ViT's for the gated FF and the fused-head projections; everything else
# FSDP when it divides.
SHARDING_RULES = (
    (r"mlp/(wi_0|wi_1)/kernel$", "fsdp,model"),
    (r"mlp/wo/kernel$", "model,fsdp"),
    (r"attention/(query|key|value)/kernel$", "fsdp,model"),
    (r"attention/out/kernel$", "model,fsdp"),
    (r"token_embedder/embedding$", "model,fsdp"),
    (r"logits_dense/kernel$", "fsdp,model"),
    (r".*", "fsdp"),
)
LANGUAGES = ("de", "en")  # the translation pair (pgf/families/wmt.py)

# Every attention kind (encoder self, decoder self, decoder cross) is sparsified for QK / QKV rows;
# the attention output projection, embeddings, relative-position tables and logits stay dense.
T5_FF = r"(encoder|decoder)/layers_\d+/mlp/(wi_0|wi_1|wo)/kernel"
T5_QK = (r"(encoder|decoder)/layers_\d+/(attention|self_attention|encoder_decoder_attention)/"
         r"(query|key)/kernel")
T5_QKV = (r"(encoder|decoder)/layers_\d+/(attention|self_attention|encoder_decoder_attention)/"
          r"(query|key|value)/kernel")
T5_SIZE_FIELDS = ("emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
                  "num_decoder_layers")
# The CPU demo model (pre-training and fine-tuning must agree for init_from): 1.05M params.
T5_DEMO_SIZES = dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256, num_encoder_layers=3,
                     num_decoder_layers=2)


def t5_rules(ff: str | None, qk: str | None = None, qkv: str | None = None):
  """Sparsity rules: FF at `ff`, plus Q/K (`qk`) or Q/K/V (`qkv`) at their patterns."""
  return config_lib.transformer_rules(T5_FF, T5_QK, T5_QKV, ff, qk, qkv)


def t5_config(ff: str | None = None, qk: str | None = None, qkv: str | None = None,
              arg: str | None = None, pretrain: bool = False) -> ml_collections.ConfigDict:
  """T5 v1.1: dense span-corruption pre-training (`pretrain=True`) or the paper's sparse GLUE
  fine-tuning at the given patterns (Table 4), or the `:demo` twin of either on Shakespeare.

  Fine-tuning starts from `config.init_from`, a pre-training workdir (its newest checkpoint's
  params).
  `:arg` keys: demo, method, variant, dataset, steps, seed, batch.
  """
  arg = config_lib.parse_arg(arg, demo=False, method="dense" if pretrain else "sdgf_stepwise",
                  variant="base", dataset="", steps=-1, seed=0, batch=-1)
  config = ml_collections.ConfigDict()
  config.seed = arg.seed
  config.model = ml_collections.ConfigDict(dict(
      name="t5", variant=arg.variant, vocab_size=0, dropout_rate=0.0 if pretrain else 0.1,
      logits_via_embedding=False, dtype="float32",
      **{field: config_dict.placeholder(int) for field in T5_SIZE_FIELDS}))
  # The paper: "10k dense" steps before sparsifying beat "zero dense" for T5X (10% of 100k).
  config.sparsity = config_lib.sparsity_config(
      arg.method, () if pretrain else t5_rules(ff, qk, qkv), dense_fraction=0.1)
  config.z_loss = 1e-4  # t5x's default
  config_lib.add_run_fields(config, eval_every=5000, checkpoint_every=5000,
                            sharding_rules=SHARDING_RULES)
  config.total_epochs = 0.0
  data = dict(data_dir="", tokenizer="byte", num_extra_ids=100, target_length=0,
              num_eval_examples=0, eval_split="", tfds_name="", noise_density=0.15,
              mean_noise_span_length=3.0, lines_per_example=4,
              holdout="", context_lines=2)
  if pretrain:
    # T5's pre-training budget: 2^19 steps of 128 x 512 tokens, span corruption 512 -> 114.
    config.data = ml_collections.ConfigDict(dict(name=arg.dataset or "c4", input_length=512,
                                                 **data))
    config.data.num_eval_examples = 10_000
    config.batch_size = 128
    config.total_steps = 524_288
    config.optim = ml_collections.ConfigDict(dict(
        lr=1e-3, reference_batch=128, schedule="cosine", warmup_steps=10_000, warmup_epochs=0.0,
        b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0, min_lr=1e-5))
  else:
    # The paper's T5X GLUE fine-tuning: batch 128, 100k steps, constant lr 1e-3, 1k warm-up.
    config.data = ml_collections.ConfigDict(dict(name=arg.dataset or "glue", input_length=512,
                                                 **data))
    config.batch_size = 128
    config.total_steps = 100_000
    config.optim = ml_collections.ConfigDict(dict(
        lr=1e-3, reference_batch=128, schedule="constant", warmup_steps=1000, warmup_epochs=0.0,
        b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0, min_lr=0.0))
  config.eval_batch_size = 128
  if arg.demo:
    config.model.update(variant="tiny", **T5_DEMO_SIZES)
    config.data.num_eval_examples = 512
    config.batch_size = 32
    config.eval_batch_size = 128
    config.log_every = 50
    config.checkpoint_every = 500
    if pretrain:
      # ByT5's span corruption for bytes: density 0.15, mean span 20 (3 bytes is too short for
      # a byte-level model to learn much from in minutes; see ShakespeareSpanCorruption).
      config.data.update(name=arg.dataset or "shakespeare_spans", input_length=128,
                         mean_noise_span_length=20.0)
      config.total_steps = 1200
      config.eval_every = 400
      config.optim.update(lr=2e-3, reference_batch=32, warmup_steps=100)
    else:
      config.data.update(name=arg.dataset or "shakespeare_genre", input_length=192)
      config.model.dropout_rate = 0.0
      config.total_steps = 600
      config.eval_every = 300
      config.optim.update(lr=1e-3, reference_batch=32, warmup_steps=30)
  return config_lib.apply_size_args(config, arg)


rules = t5_rules


def _t5_problems(config) -> list[str]:
  """Problems in the T5-only fields (model sizes, text data, tokenizer, z-loss)."""
  from pgf.models.t5 import VARIANTS  # pylint: disable=g-import-not-at-top
  from pgf.train.text_tasks import dataset_kind  # pylint: disable=g-import-not-at-top
  problems = []
  model, data = config.model, config.data
  if model.get("variant") not in VARIANTS:
    problems.append(f"config.model.variant={model.get('variant')!r}: one of {sorted(VARIANTS)}")
  for field in T5_SIZE_FIELDS:
    value = model.get(field)
    if value is not None and (not isinstance(value, int) or value <= 0):
      problems.append(f"config.model.{field}={value!r}: a positive int (or None for the variant's)")
  vocab = model.get("vocab_size", 0)
  if not isinstance(vocab, int) or vocab < 0:
    problems.append(f"config.model.vocab_size={vocab!r}: an int >= 0 (0 = the tokenizer's, padded)")
  dropout = model.get("dropout_rate", 0.0)
  if not 0.0 <= dropout < 1.0:
    problems.append(f"config.model.dropout_rate={dropout!r}: must be in [0, 1)")
  try:
    dataset_kind(data.get("name"))
  except (ValueError, AttributeError) as e:
    problems.append(str(e))
  if not isinstance(data.get("input_length"), int) or data.input_length < 3:
    problems.append(f"config.data.input_length={data.get('input_length')!r}: an int >= 3")
  for field in ("target_length", "num_eval_examples"):
    value = data.get(field, 0)
    if not isinstance(value, int) or value < 0:
      problems.append(f"config.data.{field}={value!r}: an int >= 0 (0 = automatic / all)")
  for field in ("lines_per_example", "context_lines"):
    lines = data.get(field, 1)
    if not isinstance(lines, int) or lines < 1:
      problems.append(f"config.data.{field}={lines!r}: an int >= 1 (Shakespeare lines)")
  density, span = data.get("noise_density", 0.15), data.get("mean_noise_span_length", 3.0)
  if not isinstance(density, (int, float)) or not 0.0 < density < 1.0:
    problems.append(f"config.data.noise_density={density!r}: must be in (0, 1)")
  if not isinstance(span, (int, float)) or span < 1.0:
    problems.append(f"config.data.mean_noise_span_length={span!r}: must be >= 1")
  tokenizer = data.get("tokenizer", "byte")
  if not isinstance(tokenizer, str) or not tokenizer:
    problems.append(f"config.data.tokenizer={tokenizer!r}: 'byte' or a SentencePiece model path")
  z_loss = config.get("z_loss", 0.0)
  if not isinstance(z_loss, (int, float)) or z_loss < 0:
    problems.append(f"config.z_loss={z_loss!r}: a float >= 0")
  # WMT translation (paper Table 5): its messages replace the generic ones for the same field.
  wmt = wmt_problems(config)
  fields = {p.split("=")[0] for p in wmt}
  return [p for p in problems if p.split("=")[0] not in fields] + wmt


def problems(config) -> list[str]:
  """Problems in the T5-only fields (model sizes, text data, tokenizer, z-loss, translation)."""
  return _t5_problems(config)


def wmt_problems(config) -> list[str]:
  """Problems in the translation fields (also checked for any T5 config that sets them)."""
  problems = []
  data = config.data
  bleu = data.get("bleu_examples", 0)
  if not isinstance(bleu, int) or bleu < 0:
    problems.append(f"config.data.bleu_examples={bleu!r}: an int >= 0 (0 = no BLEU)")
  if data.get("name") != "wmt":
    return problems
  source, target = data.get("source_language", "en"), data.get("target_language", "de")
  if source not in LANGUAGES or target not in LANGUAGES or source == target:
    problems.append(f"config.data.source_language={source!r} / config.data.target_language="
                    f"{target!r}: 'en' and 'de', one each")
  tokenizer = data.get("tokenizer", "byte")
  if tokenizer in ("", "byte"):
    problems.append(f"config.data.tokenizer={tokenizer!r}: WMT needs the path of a SentencePiece "
                    "model (build the 32k one with `python -m pgf.data.wmt --vocab=PATH`)")
  for field in ("input_length", "target_length"):
    value = data.get(field)
    if not isinstance(value, int) or value < 2:
      problems.append(f"config.data.{field}={value!r}: an int >= 2 (tokens per sentence + EOS)")
  return problems


# ----------------------------------------------------------------------------- model and task
def t5_model(config, vocab_size: int):
  """The T5 of `config.model` (no data needed: also for abstract params, e.g. size reports)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pgf.models import t5  # pylint: disable=g-import-not-at-top
  m = config.model
  sizes = {k: m.get(k) for k in t5.VARIANTS["base"] if m.get(k) is not None}
  return t5.T5(t5.get_config(
      m.variant, vocab_size, dropout_rate=m.get("dropout_rate", 0.0),
      logits_via_embedding=m.get("logits_via_embedding", False),
      dtype=jnp.dtype(m.get("dtype", "float32")), remat=m.get("remat", "none"),
      **sizes))


model = t5_model


def build_task(config, process_index: int = 0, process_count: int = 1):
  from pgf.train import text_tasks  # pylint: disable=g-import-not-at-top
  return text_tasks.seq2seq_task(config, process_index, process_count, model_fn=t5_model)


def abstract_model(config):
  """(model, abstract params, example inputs) without reading data; a config that fixes
  model.vocab_size (WMT's 32k) needs no tokenizer file."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pgf.train import text_tasks  # pylint: disable=g-import-not-at-top
  vocab = config.model.get("vocab_size") or text_tasks.model_vocab_size(
      config, text_tasks.build_tokenizer(config.data))
  model = t5_model(config, vocab)
  inputs = (jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
  params = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, *inputs,
                                             train=False)["params"])
  return model, params, inputs


# ----------------------------------------------------------------------------- FLOPs, benchmark
def matmuls(config, input_length: int | None = None, target_length: int | None = None,
            **unused):
  """The matmuls of the config's T5 on one (input, target) pair (pgf.analysis.flops)."""
  return _t5_from_config(config, input_length, target_length)


def _t5_from_config(config, input_length: int | None, target_length: int | None):
  """T5 sizes, vocabulary and sequence lengths the way pgf/train/text_tasks.py derives them."""
  from pgf.train import text_tasks  # pylint: disable=g-import-not-at-top
  from pgf.data import span_corruption  # pylint: disable=g-import-not-at-top
  from pgf.models import t5 as t5_lib  # pylint: disable=g-import-not-at-top
  model, data = config.model, config.data
  sizes = {k: model.get(k) for k in t5_lib.VARIANTS["base"] if model.get(k) is not None}
  # A config that fixes model.vocab_size (WMT's 32k) is counted without its vocabulary file.
  tokenizer = None if model.get("vocab_size") else text_tasks.build_tokenizer(data)
  c = t5_lib.get_config(model.get("variant", "base"),
                        model.get("vocab_size") or text_tasks.model_vocab_size(config, tokenizer),
                        logits_via_embedding=model.get("logits_via_embedding", False), **sizes)
  input_length = input_length or data.get("input_length")
  if not input_length:
    raise ValueError("config.data.input_length is not set: pass --input_length")
  target_length = target_length or data.get("target_length") or None
  if target_length is None:
    if text_tasks.dataset_kind(data.name) == "span_corruption":
      target_length = span_corruption.random_spans_helper(input_length)[1]
    else:
      target_length = _label_length(config, tokenizer or text_tasks.build_tokenizer(data))
  from pgf.analysis import flops  # pylint: disable=g-import-not-at-top
  return flops.t5_matmuls(c, int(input_length), int(target_length))


def _label_length(config, tokenizer) -> int:
  """Targets length of a classification dataset: its longest label plus EOS (as its source)."""
  from pgf.train import text_tasks  # pylint: disable=g-import-not-at-top
  from pgf.data import text  # pylint: disable=g-import-not-at-top
  name = config.data.name
  if name == "glue" or name.startswith("glue/"):
    # GLUE's labels are static, so no TFDS data is needed (regression tasks print "0.0".."5.0").
    tasks = text.GLUE_MIXTURE_TASKS if name == "glue" else (name[len("glue/"):],)
    words = [w for t in tasks for w in (text.GLUE_TASKS[t][1] or ("0.0", "5.0"))]
    return text.label_target_length(tokenizer, words, None)
  try:
    return text_tasks.build_text_source(config, tokenizer).target_length
  except (ValueError, OSError, KeyError) as e:
    raise ValueError(f"config.data.target_length=0 and the {name!r} data could not be opened "
                     f"to measure its labels ({e}): pass --target_length") from e


def flops_header(config, matmul_list, **unused):
  encoder = next(m for m in matmul_list if m.name.endswith("attention/query/kernel"))
  decoder = next(m for m in matmul_list if "self_attention/query" in m.name)
  tokens = encoder.rows + decoder.rows
  header = (f"T5 {config.model.get('variant', 'base')}: {encoder.rows} input + {decoder.rows} "
            f"target tokens per sequence")
  return header, [("sequence", 1.0), ("token", tokens)]


def bench_inputs(config, batch: int, image_size: int = 0, variant: str = ""):
  """(init_fn, loss_fn, batch, description) from the config's own task and its first batch."""
  del image_size, variant
  config.batch_size = batch
  task = build_task(config)
  return (task.init_fn, task.loss_fn, task.train_source.train_batch(0),
          f"{config.model.variant}, batch {batch}")
