"""The decoder-only LM family: model and KV cache, data, configs, training, compressed decoding."""

import functools
import glob
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pgf
from pgf import deploy, generate
from pgf.families import gpt as lm_family
from pgf.train import config_lib
from pgf.data import lm as lm_data
from pgf.data.tokenizers import ByteTokenizer
from pgf.models import gpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "lm_*.py")))
TINY = dict(emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_layers=2)


def tiny_model(**overrides):
  return gpt.GPT(gpt.get_config("demo", 384, **{**TINY, **overrides}))


@pytest.mark.parametrize("overrides", [{}, {"mlp": "gelu", "tied_embeddings": False}])
def test_cache_decoding_equals_the_full_forward_pass(overrides):
  model = tiny_model(**overrides)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  tokens = jax.random.randint(jax.random.key(1), (2, 7), 3, 259)
  forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
  full = forward(params, tokens)
  step = jax.jit(functools.partial(gpt.decode_step, model))
  cache = gpt.init_cache(model, 2, 9)
  logits, cache = step(params, cache, tokens[:, :4])  # a 4-token prefill
  steps = [logits]
  for t in range(4, 7):
    logits, cache = step(params, cache, tokens[:, t:t + 1])
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5)
  # Causal: the logits at a position do not depend on later tokens.
  np.testing.assert_allclose(forward(params, tokens.at[:, 5:].set(5))[:, :5], full[:, :5],
                             atol=1e-5)


def test_generation_greedy_and_sampled():
  model = tiny_model()
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  prompt = jax.random.randint(jax.random.key(1), (2, 3), 3, 259)
  out = jax.jit(functools.partial(gpt.generate, model, max_new_tokens=5))(params, prompt)
  assert out.shape == (2, 5) and out.dtype == jnp.int32
  # Greedy with the cache: each token is the argmax of a full forward pass over what precedes it.
  logits = model.apply({"params": params}, jnp.concatenate([prompt, out], axis=1))
  np.testing.assert_array_equal(jnp.argmax(logits[:, 2:7], -1), out)
  # Sampling: the same seed gives the same tokens; a high temperature departs from greedy.
  sample = jax.jit(functools.partial(gpt.generate, model, max_new_tokens=5, temperature=5.0))
  a = sample(params, prompt, rng=jax.random.key(3))
  np.testing.assert_array_equal(a, sample(params, prompt, rng=jax.random.key(3)))
  assert not np.array_equal(a, out)
  top1 = functools.partial(gpt.generate, model, max_new_tokens=5, temperature=5.0, top_k=1)
  np.testing.assert_array_equal(jax.jit(top1)(params, prompt, rng=jax.random.key(3)), out)


def test_sizes_and_rules_select_the_named_kernels():
  counts = {}
  for variant in ("small", "medium"):
    model = gpt.GPT(gpt.get_config(variant, 50304))
    params = jax.eval_shape(lambda m=model: m.init(jax.random.key(0),
                                                   jnp.zeros((1, 4), jnp.int32))["params"])
    counts[variant] = sum(x.size for x in jax.tree.leaves(params))
  assert 123e6 < counts["small"] < 125e6 and 340e6 < counts["medium"] < 370e6
  params = jax.eval_shape(lambda: tiny_model().init(jax.random.key(0),
                                                    jnp.zeros((1, 4), jnp.int32))["params"])
  recipe = pgf.Recipe("sr_ste", lm_family.lm_rules("1:8", qkv="1:4"), total_steps=10)
  matched = sorted(pgf.match_leaves(params, recipe))
  assert len(matched) == 2 * 6 and "layers_1/mlp/down/kernel" in matched
  assert "layers_0/attention/value/kernel" in matched
  assert not any("out" in p or "embed" in p for p in matched)
  qk = pgf.Recipe("sr_ste", lm_family.lm_rules(None, qk="1:4"), total_steps=10)
  assert sorted(p.rsplit("/", 2)[1] for p in pgf.match_leaves(params, qk)) == ["key", "key",
                                                                               "query", "query"]
  with pytest.raises(ValueError, match="mlp="):
    gpt.get_config("demo", 384, mlp="relu")


def test_shakespeare_source_is_pure_in_step_and_sharded():
  source = lm_data.ShakespeareLM(global_batch_size=4, seed=1, seq_len=32, num_eval_examples=10,
                                 eval_global_batch_size=4)
  batch = source.train_batch(7)
  assert batch["inputs"].shape == batch["targets"].shape == (4, 32)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  assert (batch["inputs"] >= 3).all()  # bytes, no padding in training rows
  np.testing.assert_array_equal(next(source.train_batches(7))["inputs"], batch["inputs"])
  halves = [lm_data.ShakespeareLM(global_batch_size=4, seed=1, seq_len=32, process_index=i,
                                  process_count=2).train_batch(7)["inputs"] for i in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves), batch["inputs"])
  evals = list(source.eval_batches())
  assert len(evals) == 3 and evals[-1]["valid"].tolist() == [True, True, False, False]
  assert (evals[-1]["targets"][2:] == 0).all()
  text = ByteTokenizer(0).decode(evals[0]["inputs"][0])
  assert text in source.text("heldout")  # held-out plays only


def test_tfds_source_packs_documents(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  tokenizer = ByteTokenizer(0)
  with tfds.testing.mock_data(num_examples=40):
    source = lm_data.TfdsLM(global_batch_size=4, seed=0, tokenizer=tokenizer, seq_len=48,
                            name="lm1b", num_eval_examples=5, eval_global_batch_size=4)
    batch = source.train_batch(3)
    assert batch["inputs"].shape == (4, 48) and (batch["inputs"] > 0).all()
    assert source.train_stride >= 1 and source.num_train == 40 // source.train_stride
    np.testing.assert_array_equal(batch["targets"], source.train_batch(3)["targets"])
    halves = [lm_data.TfdsLM(global_batch_size=4, seed=0, tokenizer=tokenizer, seq_len=48,
                             name="lm1b", process_index=i, process_count=2).train_batch(3)
              for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["inputs"] for h in halves]),
                                  batch["inputs"])
    evals = list(source.eval_batches())
    assert len(evals) == 2 and int(sum(b["valid"].sum() for b in evals)) == 5
    with pytest.raises(ValueError, match="no feature 'body'"):
      lm_data.TfdsLM(global_batch_size=4, seed=0, tokenizer=tokenizer, seq_len=48, name="lm1b",
                     feature="body")
  assert lm_data.byte_counts(tokenizer)[[0, 1, 3, 258]].tolist() == [0, 0, 1, 1]


def test_configs_validate_and_bad_fields_are_named():
  assert [os.path.basename(p) for p in LM_CONFIGS] == [
      "lm_1_16.py", "lm_1_32.py", "lm_1_4.py", "lm_1_8.py", "lm_1_8_qkv_1_8.py",
      "lm_pretrain.py"]
  for path in LM_CONFIGS:
    config_lib.validate(config_lib.load(path + ":demo"))
    # At scale the SentencePiece model is the user's to build: the one problem, and how.
    problems = config_lib.validate(config_lib.load(path), raise_errors=False)
    assert len(problems) == 1 and "python -m pgf.data.lm --vocab=PATH" in problems[0]
    doc = open(path).read()
    assert "python -m pgf.main --config=configs/" + os.path.basename(path) in doc
  config = config_lib.load(os.path.join(ROOT, "configs", "lm_1_16.py:demo"))
  config.model.update(variant="huge", head_dim=15, mlp="relu")
  config.data.seq_len = 1
  problems = config_lib.validate(config, raise_errors=False)
  for field in ("config.model.variant='huge'", "config.model.head_dim=15",
                "config.model.mlp='relu'", "config.data.seq_len=1"):
    assert any(p.startswith(field) for p in problems), (field, problems)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(summary, workdir) of one tiny FF 1:8 + QKV 1:8 SR-STE run, shared by the tests below."""
  from pgf.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = config_lib.load(os.path.join(ROOT, "configs", "lm_1_8_qkv_1_8.py:demo"))
  config.model.update(**TINY)
  config.data.update(seq_len=32, num_eval_examples=8)
  config.update(batch_size=8, eval_batch_size=8, total_steps=6, log_every=3, eval_every=0,
                checkpoint_every=6, async_checkpointing=False)
  config.sparsity.method = "sr_ste"
  config.optim.warmup_steps = 1
  workdir = str(tmp_path_factory.mktemp("lm") / "run")
  return train_and_evaluate(config, workdir), workdir


def test_train_then_compressed_decoding_equals_the_finalized_model(trained, tmp_path):
  summary, workdir = trained
  assert summary["final_step"] == 6
  assert 0 < summary["deployed_bits_per_byte"] < 12
  config, model, tokenizer, recipe, params, masks, step = generate.load_model(workdir)
  assert step == 6 and [f"{r.n}:{r.m}" for r in recipe.rules] == ["1:8", "1:8"]
  dense = generate.finalized(params, recipe, masks)
  packed = generate.compressed(params, recipe, masks)
  kernels = [k for k in jax.tree.leaves(packed, is_leaf=deploy.is_compressed)
             if deploy.is_compressed(k)]
  assert len(kernels) == 2 * 6  # 3 FF + Q, K, V per layer
  prompt = np.stack([tokenizer.encode("ROMEO:"), tokenizer.encode("JULIET")])
  want = generate.generate_tokens(model, dense, prompt, 12)
  for impl in ("gather", "expand"):
    np.testing.assert_array_equal(generate.generate_tokens(model, packed, prompt, 12, impl=impl),
                                  want)
  # Sampled from the deploy file the exporter writes: same seed, same tokens as the dense model.
  path = str(tmp_path / "model.safetensors")
  deploy.export_checkpoint(workdir, path)
  np.testing.assert_array_equal(
      generate.generate_tokens(model, deploy.load(path), prompt, 12, temperature=1.0, seed=5),
      generate.generate_tokens(model, dense, prompt, 12, temperature=1.0, seed=5))
  # The eval's deployed bits per byte is the compressed model's.
  task = lm_family.build_task(config)
  scored = generate.score(task, packed, impl="expand")
  assert scored["bits_per_byte"] == pytest.approx(summary["deployed_bits_per_byte"], rel=1e-4)


def test_generate_command_prints_text_and_refuses_bad_input(trained):
  _, workdir = trained
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  run = lambda *flags: subprocess.run([sys.executable, "-m", "pgf.generate", f"--workdir={workdir}",
                                       *flags], capture_output=True, text=True, env=env,
                                      timeout=240, cwd=ROOT)
  out = run("--prompt=ROMEO:", "--max_new_tokens=20", "--compressed", "--score")
  assert out.returncode == 0, out.stderr
  assert "compressed (in memory)" in out.stdout and "\nROMEO:" in out.stdout
  assert out.stdout.count("| finalized dense |") == 1 and "| compressed (nm_dot) |" in out.stdout
  bad = run("--prompt=", "--max_new_tokens=5")
  assert bad.returncode == 1 and "--prompt is empty" in bad.stderr
