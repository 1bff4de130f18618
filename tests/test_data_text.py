"""Tests of the text data: tokenizers, span corruption, embedded Shakespeare, TFDS C4/GLUE (mocked)."""

import sys

import numpy as np
import pytest

from pgf.data import shakespeare
from pgf.data import span_corruption as sc
from pgf.data import text
from pgf.data.tokenizers import ByteTokenizer, SentencePieceTokenizer

TOKENIZER = ByteTokenizer()


# ------------------------------------------------------------------------------------------ tokenizers


def test_byte_tokenizer_round_trips_unicode():
  s = "Héllo, wörld — ¿qué? 日本語 🎭\nnew line"
  ids = TOKENIZER.encode(s)
  assert ids.dtype == np.int32 and ids.min() >= 3 and ids.max() <= 258
  assert TOKENIZER.decode(ids) == s
  assert TOKENIZER.vocab_size == 359 and TOKENIZER.first_sentinel_id == 259


def test_byte_tokenizer_special_ids():
  t = TOKENIZER
  assert (t.pad_id, t.eos_id, t.unk_id) == (0, 1, 2)
  assert t.sentinel_id(0) == 358 and t.sentinel_id(99) == 259
  with pytest.raises(ValueError):
    t.sentinel_id(100)
  ids = np.concatenate([t.encode("ab"), [t.sentinel_id(0)], t.encode("c"), [t.eos_id], t.encode("zz"), [0, 0]])
  assert t.decode(ids) == "ab<extra_id_0>c"
  assert t.decode(ids, render_sentinels=False) == "abc"
  assert t.decode(np.concatenate([t.encode("x"), [0, 0]])) == "x"
  assert ByteTokenizer(num_extra_ids=0).vocab_size == 259


def test_sentencepiece_missing_gives_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if not installed
  with pytest.raises(ImportError, match="pip install sentencepiece"):
    SentencePieceTokenizer("spm.model")


# ------------------------------------------------------------------------------------- span corruption


@pytest.mark.parametrize("length,noise,spans", [
    (10, 2, 1),    # 1.5 rounds half-to-even to 2
    (30, 4, 1),    # 4.5 -> 4 (half-to-even), 4/3 -> 1
    (190, 29, 10),  # float32(190) * float32(0.15) = 28.500002 -> 29 (t5 computes in float32; float64 says 28)
    (568, 85, 28),  # t5's C4 setting
    (2, 1, 1), (3, 1, 1),  # clipped to [1, length - 1]
])
def test_noise_counts_follow_t5_conventions(length, noise, spans):
  assert sc.num_noise_tokens_and_spans(length) == (noise, spans)
  for seed in range(3):
    mask = sc.random_spans_noise_mask(length, rng=np.random.default_rng(seed))
    starts = np.flatnonzero(np.diff(mask.astype(int), prepend=0) == 1)
    assert mask.sum() == noise and len(starts) == spans
    assert not mask[0] and mask[-1]  # non-noise first; without random_roll the last span is noise


def test_span_counts_match_rounding_for_many_lengths():
  for length in range(2, 600, 7):
    expected_noise = min(max(int(np.round(np.float32(length) * np.float32(0.15))), 1), length - 1)
    mask = sc.random_spans_noise_mask(length, rng=np.random.default_rng(length))
    runs = np.count_nonzero(np.diff(mask.astype(int), prepend=0) == 1)
    expected_spans = max(int(np.round(np.float32(expected_noise) / np.float32(3.0))), 1)
    assert mask.sum() == expected_noise and runs == expected_spans, length


def test_span_corruption_reconstructs_exactly_and_uses_ordered_sentinels():
  t = TOKENIZER
  for seed in range(20):
    rng = np.random.default_rng(seed)
    tokens = t.encode("To be, or not to be, that is the question: " * (1 + seed % 4))
    inputs, targets = sc.span_corrupt(tokens, rng, t.vocab_size, num_extra_ids=t.num_extra_ids)
    assert inputs[-1] == t.eos_id and targets[-1] == t.eos_id
    np.testing.assert_array_equal(sc.reconstruct(inputs, targets, t.vocab_size, t.num_extra_ids), tokens)
    in_sentinels = inputs[t.is_sentinel(inputs)]
    tgt_sentinels = targets[t.is_sentinel(targets)]
    np.testing.assert_array_equal(in_sentinels, t.vocab_size - 1 - np.arange(len(in_sentinels)))
    np.testing.assert_array_equal(tgt_sentinels, in_sentinels)
    assert targets[0] == t.sentinel_id(0)  # the first span is non-noise, so targets open with a sentinel
    assert not t.is_sentinel(tokens).any()


def test_span_corruption_depends_only_on_rng():
  tokens = TOKENIZER.encode("Now is the winter of our discontent made glorious summer by this sun of York")
  corrupt = lambda seed: sc.span_corrupt(tokens, np.random.default_rng(seed), TOKENIZER.vocab_size)
  a, b, c = corrupt(1), corrupt(1), corrupt(2)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])
  masks = {sc.random_spans_noise_mask(200, rng=np.random.default_rng(s)).tobytes() for s in range(10)}
  assert len(masks) == 10


def test_random_roll_moves_the_final_span():
  masks = [sc.random_spans_noise_mask(40, rng=np.random.default_rng(s), random_roll=True) for s in range(20)]
  assert all(m.sum() == 6 for m in masks) and not all(m[-1] for m in masks)


def test_span_corruption_rejects_colliding_ids():
  with pytest.raises(ValueError, match="collide"):
    sc.span_corrupt(np.array([5, 300, 7, 8]), np.random.default_rng(0), 359, num_extra_ids=100)


def test_random_spans_helper_fills_inputs_exactly():
  assert sc.random_spans_helper(512) == (568, 114)
  for inputs_length in (64, 256, 512):
    raw, targets_length = sc.random_spans_helper(inputs_length)
    i, t = sc.span_corrupt(np.full(raw, 50), np.random.default_rng(0), 359)
    assert (len(i), len(t)) == (inputs_length, targets_length)


# ----------------------------------------------------------------------------------------- Shakespeare


def test_parse_play_keeps_only_spoken_lines():
  md = ("# A Play\n\n## ACT I\n\n### SCENE I. A heath.\n\n_Thunder. Enter three\nWitches_\n\n"
        "**First Witch**  \nWhen shall we three meet again  \n_\\[Aside]_  \nIn thunder &amp; rain?\n\n"
        "*Exeunt.*\n\n_Enter DUNCAN_\n\nWhat bloody man is that?  \n")
  assert shakespeare.parse_play(md) == ["When shall we three meet again", "In thunder & rain?",
                                        "What bloody man is that?"]


def test_corpus_split_by_play_covers_every_genre():
  plays = shakespeare.load_plays()
  train, heldout = shakespeare.split_plays("train"), shakespeare.split_plays("heldout")
  assert len(plays) == 38 and len(train) + len(heldout) == len(plays)
  assert {p.name for p in train}.isdisjoint({p.name for p in heldout})
  assert {p.name for p in heldout} == set(shakespeare.HELD_OUT_PLAYS)
  genres = set(shakespeare.genre_names())
  assert {p.genre for p in train} == genres == {p.genre for p in heldout}
  assert genres == {"comedy", "history", "problem", "roman", "romance", "tragedy"}
  assert all(len(p.lines) > 1000 for p in plays)
  corpus = shakespeare.split_text("train")
  assert "**" not in corpus and "Exeunt" not in corpus and "\\[" not in corpus


@pytest.fixture(scope="module", params=["span", "genre"])
def make_source(request):
  def make(**kw):
    kw = {"global_batch_size": 8, "seed": 3, "input_length": 128, **kw}
    if request.param == "span":
      return shakespeare.ShakespeareSpanCorruption(**kw)
    return shakespeare.ShakespeareClassification(**kw)
  return make


def test_shakespeare_batches_are_pure_functions_of_seed_and_step(make_source):
  a, b = make_source(), make_source()
  for _ in range(3):
    a.train_batch(1)  # warms caches of `a`; must not matter
  np.testing.assert_array_equal(a.train_batch(7)["inputs"], b.train_batch(7)["inputs"])
  np.testing.assert_array_equal(a.train_batch(7)["targets"], b.train_batch(7)["targets"])
  assert not np.array_equal(a.train_batch(7)["inputs"], a.train_batch(8)["inputs"])
  assert not np.array_equal(a.train_batch(7)["inputs"], make_source(seed=4).train_batch(7)["inputs"])
  batch = a.train_batch(0)
  assert batch["inputs"].shape == (8, 128) and batch["inputs"].dtype == np.int32
  assert batch["targets"].dtype == np.int32 and batch["valid"].all()


def test_two_process_slices_concatenate_to_one_process_batch(make_source):
  whole = make_source().train_batch(5)
  parts = [make_source(process_index=i, process_count=2).train_batch(5) for i in range(2)]
  for key in ("inputs", "targets", "valid"):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
  # Crossing an epoch boundary keeps working (step * batch past num_train).
  source = make_source()
  late = source.train_batch(source.num_train // 8 + 1)
  assert late["inputs"].shape == (8, 128)


def test_eval_sweep_is_deterministic_and_padded(make_source):
  source = make_source(global_batch_size=64)
  batches = list(source.eval_batches())
  assert len(batches) == source.num_eval_batches
  assert sum(b["valid"].sum() for b in batches) == source.num_eval
  assert not batches[-1]["valid"].all() or source.num_eval % 64 == 0
  np.testing.assert_array_equal(batches[-1]["inputs"][~batches[-1]["valid"]], 0)
  again = next(iter(make_source(global_batch_size=64).eval_batches()))
  np.testing.assert_array_equal(again["inputs"], batches[0]["inputs"])
  halves = [next(iter(make_source(global_batch_size=64, process_index=i, process_count=2).eval_batches()))
            for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["targets"] for h in halves]), batches[0]["targets"])


def test_span_corruption_source_reconstructs_text():
  source = shakespeare.ShakespeareSpanCorruption(global_batch_size=4, seed=0, input_length=128)
  batch = source.train_batch(0)
  assert (batch["inputs"] > 0).sum(axis=1).tolist() == [128] * 4  # raw windows fill inputs exactly
  t = source.tokenizer
  restored = sc.reconstruct(batch["inputs"][0], batch["targets"][0], t.vocab_size, t.num_extra_ids)
  assert len(restored) == source.raw_length
  assert bytes((restored - t.offset).astype(np.uint8)) in shakespeare.split_text("train").encode()


def test_classification_targets_decode_to_genres_and_baseline():
  source = shakespeare.ShakespeareClassification(global_batch_size=16, seed=0)
  batch = source.train_batch(2)
  labels = {TOKENIZER.decode(row) for row in batch["targets"]}
  assert labels <= set(source.label_names)
  assert TOKENIZER.decode(batch["inputs"][0]).startswith("shakespeare genre: ")
  counts = np.bincount(source.eval_labels, minlength=len(source.label_names))
  baseline = source.majority_class_accuracy()
  assert source.majority_class() == "history"  # 9 of the 30 training plays
  assert baseline == pytest.approx(counts[source.label_names.index("history")] / counts.sum())
  assert 0.1 < baseline < 0.5
  train_eval = shakespeare.ShakespeareClassification(split="train", global_batch_size=16, seed=0)
  assert train_eval.num_eval == train_eval.num_train
  assert source.target_length == 8  # "romance" + EOS, the longest genre word
  with pytest.raises(ValueError, match="truncates labels"):
    shakespeare.ShakespeareClassification(global_batch_size=16, seed=0, target_length=5)


@pytest.mark.parametrize("task", ["genre", "play"])
def test_tails_holdout_evaluates_unseen_endings_of_every_play(task):
  source = shakespeare.ShakespeareClassification(global_batch_size=8, seed=0, task=task, holdout="tails",
                                                 lines_per_example=2, input_length=96)
  plays = shakespeare.load_plays()
  assert source.holdout == "tails" and source.task == task
  # Every play (genre: every genre) is on both sides; held-out text is never a training passage.
  assert set(source.train_labels.tolist()) == set(source.eval_labels.tolist()) == set(
      range(len(source.label_names)))
  train_texts, eval_texts = set(source._train_texts), set(source._eval_texts)
  assert not {t for t in eval_texts if len(t) > 80} & train_texts
  lines = sum(len(p.lines) for p in plays)
  eval_lines = sum(t.count("\n") + 1 for t in source._eval_texts)
  assert eval_lines == pytest.approx(shakespeare.TAIL_FRACTION * lines, rel=0.01)
  # The last passage of the eval split is the end of the last play.
  assert source._eval_texts[-1].endswith(plays[-1].lines[-1])
  batch = source.train_batch(0)
  assert TOKENIZER.decode(batch["inputs"][0]).startswith(f"shakespeare {task}: ")
  assert {TOKENIZER.decode(row) for row in batch["targets"]} <= set(source.label_names)
  if task == "play":
    assert source.label_names == tuple(p.name for p in plays)
    assert source.target_length == max(len(p.name) for p in plays) + 1
    assert 0.0 < source.majority_class_accuracy() < 0.1  # 38 classes
  else:
    assert 0.2 < source.majority_class_accuracy() < 0.5


def test_classification_rejects_bad_task_holdout_and_lines():
  with pytest.raises(ValueError, match="task 'author'"):
    shakespeare.ShakespeareClassification(task="author")
  with pytest.raises(ValueError, match="holdout='plays' for task 'play'"):
    shakespeare.ShakespeareClassification(task="play", holdout="plays")
  with pytest.raises(ValueError, match="holdout='acts'"):
    shakespeare.ShakespeareClassification(holdout="acts")
  with pytest.raises(ValueError, match="lines_per_example=0"):
    shakespeare.ShakespeareClassification(lines_per_example=0)


def test_next_line_targets_follow_their_context_on_held_out_plays():
  source = shakespeare.ShakespeareNextLine(global_batch_size=8, seed=0, input_length=64, target_length=40,
                                           context_lines=2)
  heldout = shakespeare.split_plays("heldout")
  assert source.num_eval == sum(len(p.lines) - 2 for p in heldout)
  assert source.num_train == sum(len(p.lines) - 2 for p in shakespeare.split_plays("train"))
  t = source.tokenizer
  for batch, plays in ((source.train_batch(3), shakespeare.split_plays("train")),
                       (next(iter(source.eval_batches())), heldout)):
    texts = {"\n".join(p.lines) for p in plays}
    for inputs, targets in zip(batch["inputs"], batch["targets"]):
      context, target = t.decode(inputs), t.decode(targets)
      assert context.startswith("shakespeare next line: ")
      # The context's last bytes are kept; the target is the very next line of the same play.
      context = context[len("shakespeare next line: "):]
      assert any(context + "\n" + target in text for text in texts), (context, target)
      assert (inputs > 0).sum() <= 64 and targets[(targets > 0)][-1] == t.eos_id
  # Long contexts lose their beginning, not their end; long targets keep their start and EOS.
  inputs, targets = source._example(heldout[0], 10)
  assert inputs.size == 64 and inputs[-1] == t.eos_id
  assert t.decode(inputs).endswith(heldout[0].lines[9][-10:])
  capped = shakespeare.ShakespeareNextLine(num_eval_examples=50, input_length=64)
  assert capped.num_eval == 50 and capped._eval_index[-1][0] == len(heldout) - 1
  with pytest.raises(ValueError, match="context_lines=0"):
    shakespeare.ShakespeareNextLine(context_lines=0)
  with pytest.raises(ValueError, match="input_length=20"):
    shakespeare.ShakespeareNextLine(input_length=20)


def test_corpus_statistics():
  stats = shakespeare.corpus_statistics()
  assert sum(stats["plays_per_genre"].values()) == 38
  assert stats["characters"]["train"] > 3 * stats["characters"]["heldout"] > 0
  assert 4.0 < stats["unigram_entropy_bits_per_byte"] < 5.0


# ------------------------------------------------------------------------------------------------ TFDS


def test_feistel_sampler_is_a_permutation_per_epoch():
  for n in (1, 17, 1000):
    sampler = text.FeistelSampler(seed=5, num_examples=n, global_batch_size=n)
    first, second = sampler.global_indices(0), sampler.global_indices(1)
    np.testing.assert_array_equal(np.sort(first), np.arange(n))
    np.testing.assert_array_equal(np.sort(second), np.arange(n))
    if n > 2:
      assert not np.array_equal(first, second)
  small = text.FeistelSampler(seed=5, num_examples=1000, global_batch_size=300)
  np.testing.assert_array_equal(np.concatenate([small.global_indices(s) for s in range(4)])[:1000],
                                text.FeistelSampler(5, 1000, 1000).global_indices(0))


def test_c4_and_glue_through_mocked_data_source():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    c4 = text.C4SpanCorruption(global_batch_size=4, seed=0, tokenizer=TOKENIZER, input_length=64)
    batch = c4.train_batch(3)
    assert batch["inputs"].shape == (4, 64) and batch["targets"].shape == (4, c4.target_length)
    assert (batch["inputs"] > 0).sum(axis=1).tolist() == [64] * 4  # short documents are packed
    np.testing.assert_array_equal(batch["inputs"], c4.train_batch(3)["inputs"])
    assert len(list(c4.eval_batches())) == 3

    sst2 = text.GlueClassification("sst2", global_batch_size=8, seed=0, tokenizer=TOKENIZER, input_length=48)
    batch = sst2.train_batch(0)
    assert batch["inputs"].shape == (8, 48) and batch["targets"].shape == (8, 9)  # "negative" + EOS
    assert {TOKENIZER.decode(r) for r in batch["targets"]} <= {"negative", "positive"}
    assert TOKENIZER.decode(batch["inputs"][0]).startswith("sst2 sentence: ")
    eval_batches = list(sst2.eval_batches())
    assert sum(b["valid"].sum() for b in eval_batches) == sst2.num_eval == 12


def test_glue_text_format():
  text_in, target = text.glue_text_pair("mnli", {"premise": "A cat sat.", "hypothesis": b"An animal sat.",
                                                  "label": 0, "idx": 3})
  assert (text_in, target) == ("mnli hypothesis: An animal sat. premise: A cat sat.", "entailment")
  assert text.glue_text_pair("stsb", {"sentence1": "a", "sentence2": "b", "label": 3.87})[1] == "3.8"


def test_missing_dataset_error_is_actionable(tmp_path):
  with pytest.raises(ValueError) as info:
    text.open_tfds_split("glue/sst2", "train", str(tmp_path))
  message = str(info.value)
  assert isinstance(info.value, text.DatasetNotFoundError)
  assert "glue/sst2" in message and str(tmp_path) in message and ":demo" in message
  assert f"tfds build glue/sst2 --file_format=array_record --data_dir={tmp_path}" in message


def test_byt5_span_length_and_capped_eval_sweep():
  source = shakespeare.ShakespeareSpanCorruption(global_batch_size=4, seed=0, input_length=128,
                                                 mean_noise_span_length=20.0, num_eval_examples=10)
  t = source.tokenizer
  assert (source.raw_length, source.target_length) == sc.random_spans_helper(128, 0.15, 20.0)
  batch = source.train_batch(0)
  assert (batch["inputs"] > 0).sum(axis=1).tolist() == [128] * 4
  assert all(t.is_sentinel(row).sum() == 1 for row in batch["inputs"])  # 21 noise bytes: one span
  restored = sc.reconstruct(batch["inputs"][1], batch["targets"][1], t.vocab_size, t.num_extra_ids)
  assert len(restored) == source.raw_length
  full = shakespeare.ShakespeareSpanCorruption(global_batch_size=4, seed=0, input_length=128)
  assert source.num_eval == 10 and full.num_eval > 1000
  # Capped sweeps take evenly spaced windows: the last one lies near the end of the held-out text.
  assert source._eval_starts[-1] > 0.85 * source._eval_tokens.size
  genre = shakespeare.ShakespeareClassification(global_batch_size=4, seed=0, num_eval_examples=60)
  assert genre.num_eval == 60 and len(set(genre.eval_labels.tolist())) > 3
  with pytest.raises(ValueError, match="num_eval_examples"):
    shakespeare.ShakespeareClassification(global_batch_size=4, seed=0, num_eval_examples=-1)
