"""The WMT translation family (paper Table 5): configs/wmt_*.py, a T5 trained from scratch.

Its configs set `model.name="t5"`: the model, task, sharding, FLOPs and benchmark are the T5
family's (re-exported below), and the translation fields are checked with the T5 ones
(`pgf.families.t5.wmt_problems`). This module adds the recipe.

The paper trains an encoder-decoder from scratch on WMT with batch 512, 200k steps, Adam(0.9, 0.92)
and lr 0.0625, and reports token accuracy (dense 0.747). It does not give the model's size. Its lr
0.0625 with 1k warm-up is the base rate of the Flax WMT example's "constant * linear_warmup *
rsqrt_decay" schedule (`optim.schedule="rsqrt"`, peak 0.0625 / sqrt(1000) = 1.98e-3), so the model
is that example's shape: 6 encoder + 6 decoder layers, width 1024, 16 heads of 64, one shared 32k
SentencePiece vocabulary with the logits through the embedding. pgf builds it from its T5 v1.1
blocks, whose FF is gated (three matrices): an MLP width of 2816 (T5 v1.1-Large's) keeps the
example's 2 x 1024 x 4096 FF weights per layer within 3% (3 x 1024 x 2816) and is a multiple of
128, so every Table 5 pattern (1:16 ... 1:128) groups both FF axes exactly. 212M parameters, 104M
of them in the FF layers, which the rows sparsify (`wi_0`, `wi_1`, `wo` of all 12 layers).

Table 5 reports three methods (SR-STE, SDGF-Stepwise, MDGF-Exp); the default is MDGF-Exp, its best.
The dense phase (5%) and the hard-mask fine-tune (10%) are inside the ranges the paper's WMT
ablation found equivalent (1.25-10% and 10-20%).
"""

from __future__ import annotations

import ml_collections

from pgf.families import t5
from pgf.families.t5 import (LANGUAGES, SHARDING_RULES, abstract_model, bench_inputs,  # noqa: F401
                             build_task, flops_header, matmuls, model, problems, rules,
                             wmt_problems)
from pgf.train import config_lib

NAME = "t5"  # the model its configs build

WMT_SIZES = dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816, num_encoder_layers=6,
                 num_decoder_layers=6)
# Table 5: token accuracy (dense 0.747) as {pattern: (SR-STE, SDGF-Stepwise, MDGF-Exp)}.
PAPER_TABLE5 = {"1:16": (0.709, 0.717, 0.717), "1:32": (0.707, 0.713, 0.714),
                "1:64": (0.707, 0.710, 0.711), "1:128": (0.707, 0.708, 0.711)}
PAPER_DENSE = 0.747
VOCAB_SIZE = 32_000  # the shared SentencePiece vocabulary (a multiple of 128 already)


def wmt_config(ff: str = "1:16", arg: str | None = None) -> ml_collections.ConfigDict:
  """The paper's WMT recipe at FF pattern `ff`, or its `:demo` twin on embedded Shakespeare.

  `:arg` keys: demo, method, steps, seed, batch, dataset (the demo's data.name).
  """
  arg = config_lib.parse_arg(arg, demo=False, method="mdgf_exp", dataset="", steps=-1, seed=0,
                             batch=-1)
  config = ml_collections.ConfigDict()
  config.seed = arg.seed
  config.model = ml_collections.ConfigDict(dict(
      name="t5", variant="large", vocab_size=VOCAB_SIZE, dropout_rate=0.1, logits_via_embedding=True,
      dtype="bfloat16", **WMT_SIZES))
  config.sparsity = config_lib.sparsity_config(arg.method, t5.t5_rules(ff))
  config.z_loss = 0.0  # plain token cross-entropy
  config.train_from_scratch = True  # translation is trained from a fresh init, no init_from
  config_lib.add_run_fields(config, eval_every=10_000, checkpoint_every=5000,
                            sharding_rules=SHARDING_RULES)
  config.total_epochs = 0.0
  # tokenizer: the shared 32k SentencePiece model, `python -m pgf.data.wmt --vocab=PATH` builds it.
  # bleu_examples > 0: greedy-decode that many newstest2014 sentences per evaluation for BLEU.
  config.data = ml_collections.ConfigDict(dict(
      name="wmt", data_dir="", tokenizer="", num_extra_ids=0, input_length=256, target_length=256,
      num_eval_examples=0, tfds_name="", eval_tfds_name="", eval_split="", source_language="en",
      target_language="de", bleu_examples=0, context_lines=2))
  config.batch_size = 512
  config.eval_batch_size = 256
  # At most 32 sentence pairs per data-parallel chip per micro-batch: on a v5e-8 (64 per chip)
  # the step needs 15.61 GiB per chip in one piece, 11.36 in two, of 15.20 usable (compiled
  # without a TPU: docs/aot.md); 16 chips and up accumulate nothing. Same global batch and steps.
  config.device_micro_batch = 32
  config.total_steps = 200_000
  # Adam(0.9, 0.92) as printed (the Flax example uses b2 = 0.98); no weight decay, no clipping.
  config.optim = ml_collections.ConfigDict(dict(
      lr=0.0625, reference_batch=512, schedule="rsqrt", warmup_steps=1000, warmup_epochs=0.0,
      b1=0.9, b2=0.92, weight_decay=0.0, grad_clip=0.0, min_lr=0.0))
  if arg.demo:
    # Shakespeare's next line given the two before it stands in for translation: a seq2seq task
    # with real text, learned from scratch in CPU minutes (no WMT download). Bytes, no sentinels.
    config.model.update(variant="tiny", vocab_size=0, dropout_rate=0.0, dtype="float32",
                        **t5.T5_DEMO_SIZES)
    config.data.update(name=arg.dataset or "shakespeare_next_line", tokenizer="byte",
                       input_length=128, target_length=64, num_eval_examples=512,
                       bleu_examples=64)
    config.batch_size = 32
    config.eval_batch_size = 128
    config.device_micro_batch = 0
    config.total_steps = 400
    config.log_every = 50
    config.eval_every = 0  # only at the end: evaluation with greedy decoding costs CPU minutes
    config.checkpoint_every = 400
    # The same schedule at the demo's scale: peak 0.02 / sqrt(100) = 2e-3 after 100 steps.
    config.optim.update(lr=0.02, reference_batch=32, warmup_steps=100)
  return config_lib.apply_size_args(config, arg)
