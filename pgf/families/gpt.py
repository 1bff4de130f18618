"""The decoder-only language-model family: configs, validation and the train loop's `Task`.

    config.model.name = "gpt"          pgf/models/gpt.py (pre-norm, RoPE, SwiGLU, tied embeddings)
    config.data.name  = "shakespeare"  the embedded plays as bytes (CPU demo and research grid)
                      | "lm1b" | any TFDS text corpus (pgf/data/lm.py: packed, per-process rows)

The loss is next-token cross-entropy over every real target token (pad id 0 masked), plus
`config.z_loss` * log(Z)^2. Evaluation reports `loss_per_token`, `token_accuracy` (argmax) and
`bits_per_byte`: the model's total bits on the eval tokens divided by the UTF-8 bytes those tokens
spell (`pgf.data.lm.byte_counts`; EOS spells none, so packed documents' ends cost bits but add no
bytes). Bits per byte compares models across tokenizers; for bytes it is the loss in bits.

The sparsity rules (`lm_rules`, also `rules`): FF = `layers_\\d+/mlp/(gate|up|down|fc1|fc2)/kernel`, QK = the
query and key kernels, QKV = query, key and value; the attention output projection, embedding
(tied to the logits) and norms stay dense. Every kernel is 2-D and grouped along its input axis 0.
"""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from pgf.train import config_lib
from pgf.train.task_base import Task

log = logging.getLogger(__name__)

NAME = "gpt"
LM_FF = r"layers_\d+/mlp/(gate|up|down|fc1|fc2)/kernel"
LM_QK = r"layers_\d+/attention/(query|key)/kernel"
LM_QKV = r"layers_\d+/attention/(query|key|value)/kernel"
SHAKESPEARE = "shakespeare"
# Megatron-style: Q/K/V, gate/up (and fc1) column-parallel over "model", out/down (fc2)
# row-parallel; the contracting axes split over "fsdp" / "model" must stay multiples of M.
SHARDING_RULES = (
    (r"mlp/(gate|up|fc1)/kernel$", "fsdp,model"),
    (r"mlp/(down|fc2)/kernel$", "model,fsdp"),
    (r"attention/(query|key|value)/kernel$", "fsdp,model"),
    (r"attention/out/kernel$", "model,fsdp"),
    (r"embed/embedding$", "model,fsdp"),
    (r"lm_head/kernel$", "fsdp,model"),
    (r".*", "fsdp"),
)
VOCAB_MULTIPLE = 128
# The CPU demo model: 3 layers, width 96 (3 heads of 32), SwiGLU 256; 0.37M parameters with the
# byte vocabulary (259 ids padded to 384). Every kernel's input axis (96 or 256) is a multiple of
# 32, so every pattern up to 1:32 fits.
DEMO_SIZES = dict(emb_dim=96, num_heads=3, head_dim=32, mlp_dim=256, num_layers=3)


def lm_rules(ff: str | None, qk: str | None = None, qkv: str | None = None):
  """Sparsity rules: FF at `ff`, plus Q/K (`qk`) or Q/K/V (`qkv`) at their patterns."""
  return config_lib.transformer_rules(LM_FF, LM_QK, LM_QKV, ff, qk, qkv)


def rules(ff: str | None, qk: str | None = None, qkv: str | None = None):
  return lm_rules(ff, qk, qkv)


def lm_config(ff: str | None = "1:16", qk: str | None = None, qkv: str | None = None,
              arg: str | None = None, pretrain: bool = False) -> ml_collections.ConfigDict:
  """A GPT-2-small-sized decoder on lm1b at the given patterns, or its `:demo` twin on bytes of
  Shakespeare (3 layers, width 96, 500 steps of 32 x 96 bytes: a few CPU minutes).

  `pretrain=True` is the dense model sparse fine-tuning starts from (`config.init_from`).
  `:arg` keys: demo, method, variant, dataset, steps, seed, batch.
  """
  from pgf.models import gpt  # pylint: disable=g-import-not-at-top
  arg = config_lib.parse_arg(arg, demo=False, method="dense" if pretrain else "mdgf_exp",
                             variant="small", dataset="", steps=-1, seed=0, batch=-1)
  config = ml_collections.ConfigDict()
  config.seed = arg.seed
  config.model = ml_collections.ConfigDict(dict(
      name=NAME, variant=arg.variant, vocab_size=32_000, mlp="swiglu", tied_embeddings=True,
      dropout_rate=0.0, dtype="bfloat16",
      **{field: config_dict.placeholder(int) for field in gpt.SIZE_FIELDS}))
  config.sparsity = config_lib.sparsity_config(arg.method, () if pretrain else lm_rules(ff, qk, qkv))
  config.z_loss = 1e-4
  config_lib.add_run_fields(config, eval_every=5000, checkpoint_every=2000,
                            sharding_rules=SHARDING_RULES)
  config.total_epochs = 0.0
  # tokenizer: "byte", or a SentencePiece model (`python -m pgf.data.lm --vocab=PATH` builds the
  # 32k one model.vocab_size assumes; 32,000 is a multiple of 128 already).
  config.data = ml_collections.ConfigDict(dict(
      name=arg.dataset or "lm1b", feature="text", data_dir="", tokenizer="", seq_len=256,
      train_split="train", eval_split="", num_eval_examples=4096))
  # GPT-2 small's optimiser (AdamW 6e-4, betas 0.9/0.95, weight decay 0.1, clip 1.0), cosine to
  # 10% after 2k warm-up; 100k steps of 256 x 256 tokens (6.5B tokens, ~8 lm1b epochs).
  config.batch_size = 256
  config.eval_batch_size = 256
  config.total_steps = 100_000
  config.optim = ml_collections.ConfigDict(dict(
      lr=6e-4, reference_batch=256, schedule="cosine", warmup_steps=2000, warmup_epochs=0.0,
      b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0, min_lr=6e-5))
  if arg.demo:
    config.model.update(variant="demo", vocab_size=0, dtype="float32", **DEMO_SIZES)
    config.data.update(name=arg.dataset or SHAKESPEARE, tokenizer="byte", seq_len=96,
                       num_eval_examples=256)
    config.batch_size = 32
    config.eval_batch_size = 128
    config.total_steps = 500
    config.log_every = 50
    config.eval_every = 0  # only at the end
    config.checkpoint_every = 250
    config.keep_checkpoints = 1
    config.optim.update(lr=3e-3, reference_batch=32, warmup_steps=30, min_lr=3e-4,
                        weight_decay=0.01)
  return config_lib.apply_size_args(config, arg)


def problems(config) -> list[str]:
  """Problems in the GPT-only fields, each naming the field (config_lib.validate adds the rest)."""
  from pgf.models import gpt  # pylint: disable=g-import-not-at-top
  out = []
  model, data = config.model, config.data
  if model.get("variant") not in gpt.VARIANTS:
    out.append(f"config.model.variant={model.get('variant')!r}: one of {sorted(gpt.VARIANTS)}")
  for field in gpt.SIZE_FIELDS:
    value = model.get(field)
    if value is not None and (not isinstance(value, int) or value <= 0):
      out.append(f"config.model.{field}={value!r}: a positive int (or None for the variant's)")
  head_dim = model.get("head_dim")
  if isinstance(head_dim, int) and head_dim % 2:
    out.append(f"config.model.head_dim={head_dim}: must be even (RoPE rotates pairs)")
  if model.get("mlp", "swiglu") not in gpt.MLP_KINDS:
    out.append(f"config.model.mlp={model.get('mlp')!r}: one of {gpt.MLP_KINDS}")
  vocab = model.get("vocab_size", 0)
  if not isinstance(vocab, int) or vocab < 0:
    out.append(f"config.model.vocab_size={vocab!r}: an int >= 0 (0 = the tokenizer's, padded)")
  dropout = model.get("dropout_rate", 0.0)
  if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
    out.append(f"config.model.dropout_rate={dropout!r}: must be in [0, 1)")
  if model.get("dtype", "float32") not in config_lib.COMPUTE_DTYPES:
    out.append(f"config.model.dtype={model.get('dtype')!r}: one of {config_lib.COMPUTE_DTYPES}")
  name = data.get("name")
  if not isinstance(name, str) or not name:
    out.append(f"config.data.name={name!r}: {SHAKESPEARE!r} or a TFDS text dataset, e.g. 'lm1b'")
  seq_len = data.get("seq_len")
  if not isinstance(seq_len, int) or seq_len < 2:
    out.append(f"config.data.seq_len={seq_len!r}: an int >= 2 (tokens per training row)")
  cap = data.get("num_eval_examples", 0)
  if not isinstance(cap, int) or cap < 0:
    out.append(f"config.data.num_eval_examples={cap!r}: an int >= 0 (0 = the whole split)")
  tokenizer = data.get("tokenizer", "byte")
  if not isinstance(tokenizer, str) or not tokenizer:
    out.append(f"config.data.tokenizer={tokenizer!r}: 'byte' or a SentencePiece model path "
               "(build one with `python -m pgf.data.lm --vocab=PATH --name=lm1b`)")
  z_loss = config.get("z_loss", 0.0)
  if not isinstance(z_loss, (int, float)) or z_loss < 0:
    out.append(f"config.z_loss={z_loss!r}: a float >= 0")
  return out


# ----------------------------------------------------------------------------- the task
def build_tokenizer(data_config):
  """"byte" (no file; ids 3..258) or a SentencePiece model file with T5's ids, no sentinels."""
  from pgf.data import tokenizers  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  spec = data_config.get("tokenizer", "byte")
  if spec == "byte":
    return tokenizers.ByteTokenizer(num_extra_ids=0)
  if not spec or not os.path.isfile(spec):
    raise ValueError(f"config.data.tokenizer={spec!r}: 'byte' or the path of a SentencePiece "
                     "model file (build one with `python -m pgf.data.lm --vocab=PATH "
                     "--name=lm1b --data_dir=DATA`)")
  try:
    return tokenizers.SentencePieceTokenizer(spec, num_extra_ids=0)
  except ImportError as e:
    raise ValueError(f"config.data.tokenizer={spec!r}: {e}") from e


def vocab_size(config, tokenizer) -> int:
  """`config.model.vocab_size`, or the tokenizer's rounded up to a multiple of 128 when 0."""
  size = config.model.get("vocab_size", 0) or 0
  if size and size < tokenizer.vocab_size:
    raise ValueError(f"config.model.vocab_size={size} is smaller than the tokenizer's "
                     f"{tokenizer.vocab_size} ids")
  return size or -(-tokenizer.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def build_model(config, vocab: int):
  """The GPT of `config.model` (no data needed: also for abstract params and size reports)."""
  from pgf.models import gpt  # pylint: disable=g-import-not-at-top
  m = config.model
  sizes = {k: m.get(k) for k in gpt.SIZE_FIELDS if m.get(k) is not None}
  return gpt.GPT(gpt.get_config(
      m.variant, vocab, mlp=m.get("mlp", "swiglu"),
      tied_embeddings=m.get("tied_embeddings", True), dropout_rate=m.get("dropout_rate", 0.0),
      dtype=jnp.dtype(m.get("dtype", "float32")), **sizes))


def abstract_model(config):
  """(model, abstract params, example inputs) without reading data (for pgf.deploy --report)."""
  vocab = config.model.get("vocab_size") or vocab_size(config, build_tokenizer(config.data))
  model = build_model(config, vocab)
  inputs = (jnp.ones((1, 8), jnp.int32),)
  params = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, *inputs)["params"])
  return model, params, inputs


def build_source(config, tokenizer, process_index: int = 0, process_count: int = 1):
  """One source for `train_batch` (train split) and `eval_batches` (the eval split)."""
  from pgf.data import lm  # pylint: disable=g-import-not-at-top
  data = config.data
  common = dict(global_batch_size=config.batch_size, seed=config.seed, tokenizer=tokenizer,
                seq_len=data.seq_len, process_index=process_index, process_count=process_count,
                eval_global_batch_size=config.get("eval_batch_size") or config.batch_size,
                num_eval_examples=data.get("num_eval_examples") or None)
  if data.name == SHAKESPEARE:
    return lm.ShakespeareLM(split=data.get("eval_split") or "heldout", **common)
  return lm.TfdsLM(name=data.name, feature=data.get("feature") or "text",
                   train_split=data.get("train_split") or "train",
                   eval_split=data.get("eval_split") or "test",
                   data_dir=data.get("data_dir") or None, **common)


def token_losses(logits, targets, z_loss: float = 0.0):
  """Per-token cross-entropy (+ z_loss * logsumexp^2) in float32, shape of `targets`."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit + z_loss * jnp.square(log_z)


def build_task(config, process_index: int = 0, process_count: int = 1) -> Task:
  """The GPT on `config.data` as a `Task` for the shared train loop."""
  from pgf.data import lm  # pylint: disable=g-import-not-at-top
  tokenizer = build_tokenizer(config.data)
  source = build_source(config, tokenizer, process_index, process_count)
  vocab = vocab_size(config, tokenizer)
  model = build_model(config, vocab)
  z_loss = float(config.get("z_loss", 0.0))
  seq_len = config.data.seq_len
  counts = np.zeros(vocab, np.float32)
  table = lm.byte_counts(tokenizer)
  counts[:table.size] = table
  byte_table = jnp.asarray(counts)
  example = {"inputs": np.zeros((1, seq_len), np.int32),
             "targets": np.zeros((1, seq_len), np.int32), "valid": np.ones((1,), bool)}

  def weights_of(batch):
    return ((batch["targets"] > 0) & batch["valid"][:, None]).astype(jnp.float32)

  def init_fn(rng):
    return model.init({"params": rng}, example["inputs"], train=False)["params"]

  def loss_fn(params, batch, rng, train):
    logits = model.apply({"params": params}, batch["inputs"], train=train,
                         rngs={"dropout": rng} if train else None)
    weights = weights_of(batch)
    tokens = jnp.maximum(jnp.sum(weights), 1.0)
    loss = jnp.sum(token_losses(logits, batch["targets"], z_loss) * weights) / tokens
    correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
    return loss, {"accuracy": jnp.sum(correct * weights) / tokens}

  def eval_fn(params, batch):
    logits = model.apply({"params": params}, batch["inputs"], train=False)
    targets, weights = batch["targets"], weights_of(batch)
    losses = token_losses(logits, targets)  # no z-loss: eval reports the likelihood itself
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return {"loss_per_token": jnp.sum(losses * weights),
            "token_accuracy": jnp.sum(correct * weights), "tokens": jnp.sum(weights),
            "count": jnp.sum(batch["valid"].astype(jnp.float32)),
            "bits_per_byte": jnp.sum(losses * weights) / math.log(2),
            "bytes": jnp.sum(byte_table[targets] * weights)}

  return Task("lm", model, source, source, example, "inputs", loss_fn, eval_fn, init_fn)


gpt_config = lm_config  # the family's config builder under its model name


# ----------------------------------------------------------------------------- FLOPs, benchmarks
def matmuls(config, input_length: int | None = None, **unused):
  """The matmuls of the config's GPT on one sequence of `data.seq_len` (or `input_length`)
  tokens (pgf.analysis.flops): causal attention is counted over the full L x L scores."""
  from pgf.analysis import flops  # pylint: disable=g-import-not-at-top
  from pgf.models import gpt  # pylint: disable=g-import-not-at-top
  m = config.model
  vocab = m.get("vocab_size") or vocab_size(config, build_tokenizer(config.data))
  c = gpt.get_config(m.variant, vocab, mlp=m.get("mlp", "swiglu"),
                     **{k: m.get(k) for k in gpt.SIZE_FIELDS if m.get(k) is not None})
  length = int(input_length or config.data.seq_len)
  inner = c.num_heads * c.head_dim
  out = []
  for i in range(c.num_layers):
    prefix = f"layers_{i}"
    for name in ("query", "key", "value"):
      out.append(flops.Matmul(f"{prefix}/attention/{name}/kernel", "attention", length,
                              c.emb_dim, inner))
    out += [flops.Matmul(f"{prefix}/attention/scores", "attention", length, inner, length, False),
            flops.Matmul(f"{prefix}/attention/weighted_sum", "attention", length, length, inner,
                         False),
            flops.Matmul(f"{prefix}/attention/out/kernel", "attention", length, inner, c.emb_dim)]
    ups = ("fc1",) if c.mlp == "gelu" else ("gate", "up")
    out += [flops.Matmul(f"{prefix}/mlp/{name}/kernel", "mlp", length, c.emb_dim, c.mlp_dim)
            for name in ups]
    out.append(flops.Matmul(f"{prefix}/mlp/{'fc2' if c.mlp == 'gelu' else 'down'}/kernel", "mlp",
                            length, c.mlp_dim, c.emb_dim))
  head = "embed/embedding" if c.tied_embeddings else "lm_head/kernel"
  out.append(flops.Matmul(head, "head", length, c.emb_dim, c.vocab_size))
  return tuple(out)


def flops_header(config, matmul_list, **unused):
  length = matmul_list[0].rows
  return (f"GPT {config.model.get('variant', 'small')}: {length} tokens per sequence",
          [("sequence", 1.0), ("token", float(length))])


def bench_inputs(config, batch: int, image_size: int = 0, variant: str = ""):
  """(init_fn, loss_fn, batch, description) from the config's own task and its first batch."""
  del image_size, variant
  config.batch_size = batch
  task = build_task(config)
  return (task.init_fn, task.loss_fn, task.train_source.train_batch(0),
          f"{config.model.variant}, batch {batch} x {config.data.seq_len} tokens")
