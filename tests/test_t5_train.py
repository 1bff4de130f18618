"""T5 end to end through `train_and_evaluate`: mock C4/GLUE, Shakespeare demos, every config."""

import glob
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pgf
from pgf.train import config_lib
from pgf.train import text_tasks
from pgf.models import t5
from pgf.train import build_recipe, preflight, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T5_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "t5_*.py")))
FINETUNE_CONFIGS = [p for p in T5_CONFIGS if not p.endswith("t5_pretrain.py")]


def load_config(name, arg=None):
  return config_lib.load(os.path.join(ROOT, "configs", name) + (f":{arg}" if arg else ""))


def quick(config, steps, **model):
  """Few steps, synchronous checkpoints, evaluation only at the end; optional smaller model."""
  config.model.update(model)
  config.update(total_steps=steps, log_every=1, eval_every=0, checkpoint_every=100,
                async_checkpointing=False)
  config.optim.update(warmup_steps=0)
  return config


TINY = dict(variant="tiny", emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=1,
            num_decoder_layers=1)


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_pretrain_then_sparse_finetune_on_mock_c4_and_glue(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  pre_dir, fine_dir = str(tmp_path / "pretrain"), str(tmp_path / "finetune")
  pretrain = quick(load_config("t5_pretrain.py"), 1, **TINY)
  pretrain.data.update(input_length=48, num_eval_examples=6)
  pretrain.update(batch_size=4, eval_batch_size=4)
  finetune = quick(load_config("t5_1_8_qkv_1_8.py"), 1, **TINY)
  finetune.data.input_length = 64
  finetune.update(batch_size=4, eval_batch_size=16, init_from=pre_dir)
  with tfds.testing.mock_data(num_examples=6):
    summary = train_and_evaluate(pretrain, pre_dir)
    assert summary["final_step"] == 1 and summary["method"] == "dense"
    for key in ("loss_per_token", "token_accuracy", "sequence_accuracy", "bits_per_byte",
                "unigram_bits_per_byte"):
      assert np.isfinite(summary[f"current_{key}"]), key
    assert "current_bytes" not in summary  # a denominator, not a metric
    # Untrained: about log2(384) bits per byte, well above the unigram entropy of the targets.
    assert summary["current_bits_per_byte"] > summary["current_unigram_bits_per_byte"]
    pretrained = summary["state"]["params"]

    summary = train_and_evaluate(finetune, fine_dir)
  assert summary["final_step"] == 1 and summary["method"] == "sdgf_stepwise"
  # One Adam step from the pre-trained params moves each weight by about the lr (no fresh init).
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), pretrained,
                       summary["state"]["params"])
  assert max(jax.tree.leaves(moved)) < 0.01
  tasks = [key[len("deployed_exact_match_"):] for key in summary
           if key.startswith("deployed_exact_match_")]
  assert sorted(tasks) == sorted(text_tasks_glue_mixture())
  for kind in ("current", "deployed"):
    assert 0.0 <= summary[f"{kind}_exact_match"] <= 1.0
    assert 0.0 < summary[f"{kind}_majority_baseline"] <= 1.0
  assert json.loads((tmp_path / "finetune" / "config.json").read_text())["data"]["name"] == "glue"
  # Mock GLUE examples are random ids; the model still saw every GLUE task in its eval sweep.
  assert summary["deployed_exact_match"] == pytest.approx(
      np.mean([summary[f"deployed_exact_match_{t}"] for t in tasks]))


def text_tasks_glue_mixture():
  from pgf.data.text import GLUE_MIXTURE_TASKS  # pylint: disable=g-import-not-at-top
  return GLUE_MIXTURE_TASKS


def test_demo_pretrain_then_demo_sparse_finetune(tmp_path):
  """The :demo configs as shipped (model sizes included), a few steps each."""
  pre_dir, fine_dir = str(tmp_path / "pretrain"), str(tmp_path / "finetune")
  pretrain = quick(load_config("t5_pretrain.py", "demo"), 3)
  pretrain.data.num_eval_examples = 16
  pretrain.eval_batch_size = 16
  summary = train_and_evaluate(pretrain, pre_dir)
  assert summary["final_step"] == 3
  # The held-out targets' byte histogram: close to the corpus' 4.77 bits/byte, a bit below it
  # because noise spans skip the newlines between lines far less often than not.
  assert 3.5 < summary["current_unigram_bits_per_byte"] < 5.0

  # 10 steps: 1 dense (10%), 8 SDGF-Stepwise (7:8 -> 4:8 -> 2:8), 1 at the final 1:8 (10%).
  finetune = quick(load_config("t5_1_8_qkv_1_8.py", "demo"), 10)
  finetune.data.num_eval_examples = 24
  finetune.update(init_from=pre_dir, eval_batch_size=24, log_every=5)
  summary = train_and_evaluate(finetune, fine_dir)
  assert summary["final_step"] == 10
  train_lines = [l for l in read_metrics(fine_dir) if l["kind"] == "train"]
  assert train_lines[-1]["phase"] == "finetune"
  assert train_lines[-1]["sparsity"] == pytest.approx(7 / 8)
  for kind in ("current", "deployed"):
    # Teacher-forced "every token is the argmax" is exactly "greedy decoding reproduces the target".
    assert summary[f"{kind}_sequence_accuracy"] == summary[f"{kind}_exact_match"]
  assert 0.1 < summary["deployed_majority_baseline"] < 0.5
  deployed = pgf.finalize(summary["state"]["params"], build_recipe(finetune, 10))
  wi = np.asarray(deployed["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"])
  value = np.asarray(deployed["encoder"]["layers_0"]["attention"]["value"]["kernel"])
  out = np.asarray(deployed["encoder"]["layers_0"]["attention"]["out"]["kernel"])
  for kernel in (wi, value):
    np.testing.assert_array_equal((kernel.reshape(-1, 8, kernel.shape[1]) != 0).sum(axis=1), 1)
  assert np.count_nonzero(out) == out.size  # the attention output projection stays dense


def test_every_t5_config_runs_every_method_on_t5_base():
  model = t5.T5(t5.get_config("base", vocab_size=32128))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32),
                                             jnp.ones((1, 4), jnp.int32)))["params"]
  for path in T5_CONFIGS:
    if path.endswith("t5_pretrain.py"):
      continue
    for method in ("dense", "sr_ste", "mdgf_linear", "mdgf_exp", "sdgf_stepwise",
                   "sdgf_geometric", "mdgf_exp+sdgf_geometric"):
      config = config_lib.load(f"{path}:method={method}")
      config_lib.validate(config)
      recipe, notes = pgf.fit_sdgf_k(params, build_recipe(config, config.total_steps))
      assert not notes, (path, method, notes)  # T5-Base's 768 / 2048 widths hold k = 8
      pgf.check_params(params, recipe)


@pytest.mark.parametrize("path", T5_CONFIGS, ids=os.path.basename)
def test_every_t5_config_builds_its_recipe_for_t5_base(path):
  config = config_lib.load(path)
  config_lib.validate(config)
  assert config.model.variant == "base" and config.batch_size == 128
  recipe = build_recipe(config, config.total_steps)
  model = t5.T5(t5.get_config("base", vocab_size=32128))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32),
                                             jnp.ones((1, 4), jnp.int32)))["params"]
  if path.endswith("t5_pretrain.py"):
    assert recipe.method == "dense" and not recipe.rules
    assert config.data.name == "c4" and config.total_steps == 524_288
  else:
    assert recipe.method == "sdgf_stepwise" and config.data.name == "glue"
    assert config.total_steps == 100_000 and config.optim.schedule == "constant"
    assert config.optim.lr == 1e-3 and config.optim.warmup_steps == 1000
    assert learning_rate_of(config) == 1e-3
    matched = pgf.check_params(params, recipe)
    ff = [p for p in matched if "/mlp/" in p]
    assert len(ff) == 3 * (12 + 12)
    attention = sorted(p for p in matched if "attention" in p)
    name = os.path.basename(path)
    if "qkv" in name:
      assert len(attention) == 3 * (12 + 2 * 12)
    elif "qk" in name:
      assert len(attention) == 2 * (12 + 2 * 12) and not any("/value/" in p for p in attention)
    else:
      assert not attention
    assert not any("/out/" in p or "embed" in p or "logits" in p for p in matched)
  demo = config_lib.load(path + ":demo")
  config_lib.validate(demo)
  assert demo.model.variant == "tiny" and demo.data.name.startswith("shakespeare")
  other = config_lib.load(path + ":method=sr_ste,variant=small")
  assert other.sparsity.method == "sr_ste" and other.model.variant == "small"


def learning_rate_of(config):
  from pgf.train import learning_rate  # pylint: disable=g-import-not-at-top
  return learning_rate(config)


@pytest.mark.parametrize("field,value,message", [
    ("data.name", "glue/nope", "config.data.name='glue/nope'"),
    ("data.tokenizer", "/no/such/spm.model", "config.data.tokenizer='/no/such/spm.model'"),
    ("model.vocab_size", 100, "config.model.vocab_size=100"),
    ("model.variant", "huge", "config.model.variant='huge'"),
    ("data.input_length", 2, "config.data.input_length=2"),
    ("model.emb_dim", 0, "config.model.emb_dim=0"),
    ("data.context_lines", 0, "config.data.context_lines=0"),
    ("data.lines_per_example", -1, "config.data.lines_per_example=-1"),
])
def test_bad_t5_config_fields_are_named(field, value, message):
  config = load_config("t5_1_32.py", "demo")
  config_lib.apply_overrides(config, {field: value})
  with pytest.raises(ValueError) as info:
    preflight(config)
  assert message in str(info.value)


def test_config_lock_rejects_typos():
  config = load_config("t5_1_4.py", "demo")
  config.lock()
  with pytest.raises(AttributeError):
    config.model.emb_dimm = 64
  with pytest.raises(ValueError, match="metod"):
    load_config("t5_1_4.py", "metod=sr_ste")


def test_token_losses_and_bits_per_text_byte():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 5, 12)), jnp.float32)
  targets = jnp.asarray([[11, 4, 5, 10, 1], [11, 6, 1, 0, 0]])  # 10, 11 sentinels; 1 EOS; 0 pad
  np.testing.assert_allclose(text_tasks.token_losses(logits, targets),
                             optax.softmax_cross_entropy_with_integer_labels(logits, targets),
                             rtol=1e-6)
  log_z = jax.nn.logsumexp(logits, -1)
  np.testing.assert_allclose(text_tasks.token_losses(logits, targets, 0.1) -
                             text_tasks.token_losses(logits, targets), 0.1 * log_z ** 2, rtol=1e-5)
  batch = {"targets": targets, "valid": jnp.asarray([True, True])}
  weights = text_tasks.target_weights(batch)
  np.testing.assert_array_equal(weights, [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  text = text_tasks._text_token_weights(targets, weights, first_sentinel_id=10, eos_id=1)
  np.testing.assert_array_equal(text, [[0, 1, 1, 0, 0], [0, 1, 0, 0, 0]])
  assert text_tasks.unigram_entropy_bits([5, 5, 0]) == pytest.approx(1.0)
  assert text_tasks.unigram_entropy_bits([1, 1, 1, 1]) == pytest.approx(2.0)
  assert text_tasks.unigram_entropy_bits([7]) == 0.0
  assert math.isclose(text_tasks.unigram_entropy_bits(np.ones(256)), 8.0)


def test_dataset_kinds_and_vocab_padding():
  assert text_tasks.dataset_kind("c4") == "span_corruption"
  assert text_tasks.dataset_kind("glue/mnli") == "classification"
  assert text_tasks.dataset_kind("shakespeare_play") == "classification"
  assert text_tasks.dataset_kind("shakespeare_next_line") == "generation"
  with pytest.raises(ValueError, match="config.data.name"):
    text_tasks.dataset_kind("imagenet2012")
  config = load_config("t5_1_4.py", "demo")
  tokenizer = text_tasks.build_tokenizer(config.data)
  assert tokenizer.vocab_size == 359
  assert text_tasks.model_vocab_size(config, tokenizer) == 384
