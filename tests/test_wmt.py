"""WMT translation (paper Table 5) and SentencePiece end to end: tokenizer trained here, mock TFDS."""

import os

import numpy as np
import pytest

from pgf.families import t5 as t5_family
from pgf.train import text_tasks
from pgf.data import shakespeare
from pgf.data import tokenizers
from pgf.data.tokenizers import SentencePieceTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPM_VOCAB = 384


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
  """A 384-piece SentencePiece model trained on the embedded Shakespeare (no download, ~2 s)."""
  lines = [line for play in shakespeare.split_plays("train") for line in play.lines][:20_000]
  path = tmp_path_factory.mktemp("spm") / "shakespeare.model"
  return tokenizers.train_sentencepiece(lines, str(path), vocab_size=SPM_VOCAB)


# ------------------------------------------------------------------------------------- SentencePiece
def test_sentencepiece_trained_in_test_has_t5_ids_and_round_trips(spm_file):
  t = SentencePieceTokenizer(spm_file, num_extra_ids=0)
  assert (t.pad_id, t.eos_id, t.unk_id) == (0, 1, 2) and t.vocab_size == SPM_VOCAB
  line = "To be, or not to be: that is the question."
  ids = t.encode(line)
  assert ids.dtype == np.int32 and ids.min() >= 3 and ids.max() < SPM_VOCAB
  assert len(ids) < len(line.encode()) // 2  # pieces, not bytes
  assert t.decode(np.concatenate([ids, [t.eos_id], ids, [0, 0]])) == line  # stops at EOS
  with_sentinels = SentencePieceTokenizer(spm_file, num_extra_ids=10)
  assert with_sentinels.vocab_size == SPM_VOCAB + 10
  assert with_sentinels.sentinel_id(0) == SPM_VOCAB + 9
  assert with_sentinels.decode([*ids[:2], with_sentinels.sentinel_id(0), *ids[2:4]]) == (
      t.decode(ids[:2]) + "<extra_id_0>" + t.decode(ids[2:4]))


def test_sentencepiece_training_is_deterministic_and_checks_size(spm_file, tmp_path):
  lines = [line for play in shakespeare.split_plays("train") for line in play.lines][:20_000]
  again = tokenizers.train_sentencepiece(lines, str(tmp_path / "sub" / "again.model"),
                                         vocab_size=SPM_VOCAB)
  assert open(again, "rb").read() == open(spm_file, "rb").read()
  with pytest.raises(ValueError, match="vocab_size=3"):
    tokenizers.train_sentencepiece(lines, str(tmp_path / "x.model"), vocab_size=3)


def test_t5_tokenizer_path_accepts_a_sentencepiece_model(spm_file):
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(os.path.join(ROOT, "configs", "t5_1_32.py") +
                           ":demo,dataset=shakespeare_next_line")
  config.data.tokenizer = spm_file
  config_lib.validate(config)
  tokenizer = text_tasks.build_tokenizer(config.data)
  assert isinstance(tokenizer, SentencePieceTokenizer)
  assert tokenizer.vocab_size == SPM_VOCAB + 100  # T5's 100 sentinels on top
  assert text_tasks.model_vocab_size(config, tokenizer) == 512  # padded to a multiple of 128
  source = text_tasks.build_text_source(config, tokenizer)
  batch = source.train_batch(0)
  assert batch["inputs"].max() < SPM_VOCAB and batch["targets"].max() < SPM_VOCAB
  assert tokenizer.decode(batch["inputs"][0]).startswith("shakespeare next line: ")
  rows = (batch["targets"] == tokenizer.eos_id).sum(axis=1)
  assert (rows == 1).all()  # every target is one EOS-terminated line


# ------------------------------------------------------------------------------------ rsqrt schedule
def test_rsqrt_schedule_is_the_printed_constant_over_sqrt_step():
  import ml_collections  # pylint: disable=g-import-not-at-top
  import pgf  # pylint: disable=g-import-not-at-top
  from pgf import train  # pylint: disable=g-import-not-at-top
  schedule = train.rsqrt_schedule(0.0625, 1000)
  expected = {0: 0.0, 1: 0.0625 / 1000 / 1000 ** 0.5, 500: 0.0625 / 2 / 1000 ** 0.5,
              1000: 0.0625 / 1000 ** 0.5, 4000: 0.0625 / 4000 ** 0.5,
              200_000: 0.0625 / 200_000 ** 0.5}
  for step, value in expected.items():
    assert float(schedule(step)) == pytest.approx(value, rel=1e-6), step
  assert float(schedule(1000)) == pytest.approx(1.976e-3, rel=1e-3)  # the peak
  assert float(schedule(4000)) == pytest.approx(float(schedule(1000)) / 2, rel=1e-6)
  # Wired into the trainer's optimizer builder; the warm-up is not clamped to a short run.
  config = ml_collections.ConfigDict(dict(batch_size=512, optim=dict(
      lr=0.0625, reference_batch=512, schedule="rsqrt", b1=0.9, b2=0.92, weight_decay=0.0,
      grad_clip=0.0)))
  recipe = pgf.Recipe(method="dense", rules=(), total_steps=10)
  _, built = train.build_optimizer(config, recipe, total_steps=10, warmup_steps=1000)
  for step in (0, 5, 1000, 3000):
    assert float(built(step)) == pytest.approx(float(schedule(step)), rel=1e-6)
  config.optim.schedule = "linear"
  with pytest.raises(ValueError, match="config.optim.schedule='linear'"):
    train.build_optimizer(config, recipe, total_steps=10, warmup_steps=1000)


# ----------------------------------------------------------------------------------- WMT (mock TFDS)
TINY = dict(variant="tiny", emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=1,
            num_decoder_layers=1)


def load_config(name, arg=None):
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load(os.path.join(ROOT, "configs", name) + (f":{arg}" if arg else ""))


def test_wmt_source_reads_pairs_through_mocked_tfds(spm_file):
  tfds = pytest.importorskip("tensorflow_datasets")
  from pgf.data import wmt  # pylint: disable=g-import-not-at-top
  tokenizer = SentencePieceTokenizer(spm_file, num_extra_ids=0)
  with tfds.testing.mock_data(num_examples=10):
    source = wmt.WmtTranslation(global_batch_size=4, seed=0, tokenizer=tokenizer, input_length=24,
                                target_length=16, eval_global_batch_size=4)
    raw = tfds.data_source(wmt.EVAL_NAME, split=wmt.EVAL_SPLIT)[0]
    batch = source.train_batch(2)
    assert batch["inputs"].shape == (4, 24) and batch["targets"].shape == (4, 16)
    np.testing.assert_array_equal(batch["targets"], source.train_batch(2)["targets"])
    for row in batch["targets"]:  # EOS-terminated (kept when truncated), then padding
      ends = np.flatnonzero(row == tokenizer.eos_id)
      assert len(ends) == 1 and (row[ends[0] + 1:] == 0).all()
    # En -> De by default; eval is newstest2014 (wmt14 "test"), in storage order.
    first = next(source.eval_batches())
    expected = tokenizer.encode(raw["de"].decode() if isinstance(raw["de"], bytes) else raw["de"])
    n = min(len(expected), 15)
    np.testing.assert_array_equal(first["targets"][0, :n], expected[:n])
    assert sum(int(b["valid"].sum()) for b in source.eval_batches()) == source.num_eval == 10
    # Two processes split every global batch: together they see what one process sees.
    halves = [wmt.WmtTranslation(global_batch_size=4, seed=0, tokenizer=tokenizer, input_length=24,
                                 target_length=16, process_index=i, process_count=2)
              for i in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([h.train_batch(2)["inputs"] for h in halves]), batch["inputs"])
    reverse = wmt.WmtTranslation(global_batch_size=4, seed=0, tokenizer=tokenizer,
                                 source_language="de", target_language="en")
    assert reverse.pair_text({"de": b"Hallo", "en": "Hello"}) == ("Hallo", "Hello")
    with pytest.raises(ValueError, match="source_language='en', target_language='en'"):
      wmt.WmtTranslation(global_batch_size=4, seed=0, tokenizer=tokenizer, target_language="en")
    sentences = list(wmt.vocabulary_sentences(max_pairs=3))
    assert len(sentences) == 6 and all(isinstance(s, str) for s in sentences)


def test_wmt_config_one_train_step_on_mock_tfds(spm_file, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from pgf.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = load_config("wmt_1_16.py")
  config.model.update(dtype="float32", **TINY)
  config.data.update(tokenizer=spm_file, input_length=24, target_length=16, bleu_examples=4)
  config.update(batch_size=4, eval_batch_size=4, total_steps=1, log_every=1, eval_every=0,
                checkpoint_every=100, async_checkpointing=False)
  with tfds.testing.mock_data(num_examples=8):
    summary = train_and_evaluate(config, str(tmp_path / "wmt"))
  assert summary["final_step"] == 1 and summary["method"] == "mdgf_exp"
  for kind in ("current", "deployed"):
    assert 0.0 <= summary[f"{kind}_token_accuracy"] <= 1.0
    assert 0.0 <= summary[f"{kind}_bleu"] <= 100.0
    assert np.isfinite(summary[f"{kind}_loss_per_token"])
  # lr 0.0625 is given at the reference batch 512 and scaled linearly to the batch used.
  assert summary["lr_peak"] == pytest.approx(0.0625 * 4 / 512)


# ----------------------------------------------------------------------- configs x methods, full size
WMT_CONFIGS = ("wmt_1_16.py", "wmt_1_32.py", "wmt_1_64.py", "wmt_1_128.py")
TABLE5_METHODS = ("dense", "sr_ste", "sdgf_stepwise", "mdgf_exp")


@pytest.fixture(scope="module")
def wmt_params():
  """Abstract params of the full-size WMT model with the 32k vocabulary (nothing materialised)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model = t5_family.t5_model(load_config("wmt_1_16.py"), vocab_size=32_000)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32),
                                           jnp.ones((1, 4), jnp.int32)))["params"]


def test_every_wmt_config_and_method_fits_the_full_size_model(wmt_params):
  import jax  # pylint: disable=g-import-not-at-top
  import pgf  # pylint: disable=g-import-not-at-top
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top
  from pgf.train import build_recipe, learning_rate  # pylint: disable=g-import-not-at-top
  sizes = [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(wmt_params)]
  assert 205e6 < sum(sizes) < 215e6  # 212M, the Flax WMT example's size class
  assert "logits_dense" not in wmt_params["decoder"]  # logits through the shared embedding
  for name in WMT_CONFIGS:
    m = int(name[len("wmt_1_"):-3])
    for method in TABLE5_METHODS:
      config = load_config(name, f"method={method}")
      config.data.tokenizer = "/path/to/wmt_de_en_32k.model"
      config_lib.validate(config)
      assert config.batch_size == 512 and config.total_steps == 200_000
      assert (config.optim.b1, config.optim.b2, config.optim.schedule) == (0.9, 0.92, "rsqrt")
      assert learning_rate(config) == 0.0625 and config.optim.warmup_steps == 1000
      recipe, notes = pgf.fit_sdgf_k(wmt_params, build_recipe(config, config.total_steps))
      assert not notes, (name, method, notes)
      matched = pgf.check_params(wmt_params, recipe)  # every rule matches; every M divides
      assert len(matched) == 3 * (6 + 6) and all("/mlp/" in p for p in matched)
      assert [(r.n, r.m) for r in recipe.rules] == [(1, m)]
    demo = load_config(name, "demo")
    config_lib.validate(demo)
    assert demo.data.name == "shakespeare_next_line" and demo.model.emb_dim % m == 0


def test_default_sharding_places_the_wmt_kernels(wmt_params):
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import AbstractMesh, AxisType, PartitionSpec  # pylint: disable=g-import-not-at-top
  from pgf.train import sharding  # pylint: disable=g-import-not-at-top
  from pgf.sparsify import leaf_path  # pylint: disable=g-import-not-at-top
  mesh = AbstractMesh((1, 8, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  rules = sharding.parse_rules(sharding.DEFAULT_RULES)
  specs = {leaf_path(kp): (leaf.shape, sharding.leaf_spec(leaf_path(kp), leaf.shape, rules, mesh))
           for kp, leaf in jax.tree_util.tree_flatten_with_path(wmt_params)[0]}
  sizes = dict(mesh.shape)
  for path, (shape, spec) in specs.items():
    if "/mlp/" in path:
      # Megatron FF, and at 1:128 each shard of the grouped (contracting) axis holds whole groups.
      assert spec == (PartitionSpec("model", "fsdp") if "/wo/" in path
                      else PartitionSpec("fsdp", "model")), path
      assert (shape[0] // sizes[spec[0]]) % 128 == 0, path
    elif "attention/" in path and path.endswith("kernel"):
      assert spec in (PartitionSpec("fsdp", "model"), PartitionSpec("model", "fsdp")), path
  assert specs["token_embedder/embedding"][1] == PartitionSpec("model", "fsdp")


# ------------------------------------------------------------------------------- metrics, validation
def test_token_accuracy_on_a_hand_made_batch():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  targets = np.array([[5, 6, 7, 1], [8, 1, 0, 0], [9, 9, 1, 0]])
  predicted = np.array([[5, 6, 3, 1],    # 3 of 4 right
                        [4, 1, 0, 0],    # 1 of 2 right; argmax on padding does not count
                        [9, 9, 1, 7]])   # a padded eval row: ignored entirely
  logits = jnp.asarray(np.eye(12)[predicted] * 5.0, jnp.float32)
  batch = {"targets": jnp.asarray(targets), "valid": jnp.asarray([True, True, False])}
  correct, tokens = text_tasks.token_accuracy_sums(logits, batch["targets"],
                                                   text_tasks.target_weights(batch))
  assert (float(correct), float(tokens)) == (4.0, 6.0)  # token accuracy 4/6, pooled over tokens


def test_bleu_is_sacrebleu_on_the_detokenized_pieces(spm_file):
  import sacrebleu  # pylint: disable=g-import-not-at-top
  from pgf.data.text import pad_or_truncate  # pylint: disable=g-import-not-at-top
  t = SentencePieceTokenizer(spm_file, num_extra_ids=0)
  references = ["What light through yonder window breaks?", "The lady doth protest too much.",
                "Good night, good night! Parting is such sweet sorrow."]
  hypotheses = ["What light through yonder window breaks?", "The lady protests too much.",
                "Good night, parting is sweet sorrow."]
  rows = [pad_or_truncate(np.append(t.encode(h), t.eos_id), 40) for h in hypotheses]
  decoded = [t.decode(row, render_sentinels=False) for row in rows]
  assert decoded == hypotheses  # SentencePiece detokenizes these losslessly
  score = text_tasks.corpus_bleu(decoded, references)
  assert score == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
  assert 0.0 < score < 100.0
  assert text_tasks.corpus_bleu(references, references) == pytest.approx(100.0)


@pytest.mark.parametrize("field,value,message", [
    ("data.tokenizer", "byte", "config.data.tokenizer='byte': WMT needs"),
    ("data.source_language", "fr", "config.data.source_language='fr'"),
    ("data.target_language", "en", "config.data.target_language='en'"),
    ("data.bleu_examples", -1, "config.data.bleu_examples=-1"),
    ("data.target_length", 1, "config.data.target_length=1"),
    ("optim.schedule", "rsqrt_decay", "config.optim.schedule='rsqrt_decay'"),
    ("data.name", "wmt19", "config.data.name='wmt19'"),
])
def test_bad_wmt_config_fields_are_named(field, value, message):
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top
  config = load_config("wmt_1_32.py")
  config.data.tokenizer = "/path/to/wmt_de_en_32k.model"
  config_lib.apply_overrides(config, {field: value})
  with pytest.raises(ValueError) as info:
    config_lib.validate(config)
  assert message in str(info.value)
  assert text_tasks.dataset_kind("wmt") == "translation"


def test_flops_of_the_wmt_model_by_hand(wmt_params):
  from pgf.analysis import flops  # pylint: disable=g-import-not-at-top
  from pgf.sparsify import leaf_path  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  config = load_config("wmt_1_16.py")  # no vocabulary file needed: model.vocab_size is 32000
  matmuls = flops.matmuls_from_config(config)
  paths = {leaf_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(wmt_params)[0]}
  assert {mm.name for mm in matmuls if mm.kernel} <= paths  # every counted kernel is real
  length, emb, mlp = 256, 1024, 2816
  projections = 4 * 2 * length * emb * emb          # Q, K, V, out (cross K/V: 256 input rows)
  products = 2 * 2 * length * length * emb          # scores and weighted sum
  ff = 3 * 2 * length * emb * mlp                   # wi_0, wi_1, wo
  dense = flops.inference_flops(matmuls)
  assert dense["attention"] == (6 + 2 * 6) * (projections + products)
  assert dense["mlp"] == 12 * ff
  assert dense["head"] == 2 * length * emb * 32_000  # through the shared embedding, not counted
  for name in WMT_CONFIGS:
    m = int(name[len("wmt_1_"):-3])
    sparse = flops.inference_flops(matmuls, load_config(name).sparsity.rules)
    assert sparse["mlp"] == pytest.approx(dense["mlp"] / m)
    assert sparse["attention"] == dense["attention"]
  assert dense["total"] / 1e9 == pytest.approx(96.6368, abs=1e-4)


def test_demo_few_steps_ends_exact_n_m(tmp_path):
  """The :demo as shipped (model size included), a few steps: dense, MDGF-Exp, then hard 1:128."""
  import json  # pylint: disable=g-import-not-at-top
  import pgf  # pylint: disable=g-import-not-at-top
  from pgf.train import build_recipe, train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = load_config("wmt_1_128.py", "demo,steps=10,batch=8")
  config.data.update(num_eval_examples=8, bleu_examples=0)  # BLEU: the mock WMT test above
  config.update(eval_batch_size=8, log_every=5, checkpoint_every=100, async_checkpointing=False)
  summary = train_and_evaluate(config, str(tmp_path / "demo"))
  assert summary["final_step"] == 10
  with open(tmp_path / "demo" / "metrics.jsonl") as f:
    train_lines = [line for line in map(json.loads, f) if line["kind"] == "train"]
  assert train_lines[-1]["phase"] == "finetune"
  assert train_lines[-1]["sparsity"] == pytest.approx(127 / 128)
  for key in ("token_accuracy", "bits_per_byte", "unigram_bits_per_byte"):
    assert np.isfinite(summary[f"deployed_{key}"]), key
  deployed = pgf.finalize(summary["state"]["params"], build_recipe(config, 10))
  for layer in ("encoder/layers_0", "decoder/layers_1"):
    node = deployed
    for key in layer.split("/"):
      node = node[key]
    for name in ("wi_0", "wi_1", "wo"):
      kernel = np.asarray(node["mlp"][name]["kernel"])
      groups = (kernel.reshape(-1, 128, kernel.shape[1]) != 0).sum(axis=1)
      np.testing.assert_array_equal(groups, 1)  # exactly 1 of every 128 inputs, every column
  attention = np.asarray(deployed["encoder"]["layers_0"]["attention"]["query"]["kernel"])
  assert np.count_nonzero(attention) == attention.size  # attention stays dense
