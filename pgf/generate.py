"""Text from a trained decoder-only LM (configs/lm_*.py), dense or from its compressed N:M form.

  # the finalized model (trained masks applied, dense kernels):
  python -m pgf.generate --workdir=RUN --prompt="ROMEO:"
  # the same model compressed: every N:M kernel an NMKernel, contracted with nm_dot:
  python -m pgf.generate --workdir=RUN --prompt="ROMEO:" --compressed
  # ... or read from the deploy file `python -m pgf.deploy --workdir=RUN --out=F` wrote:
  python -m pgf.generate --workdir=RUN --file=F --prompt="ROMEO:" --temperature=0.8 --top_k=40
  # bits per byte of the run's eval split, finalized dense vs compressed (nm_dot):
  python -m pgf.generate --workdir=RUN --score

Decoding uses the model's key/value cache (`pgf.models.gpt.generate`): the prompt fills it in one
call, then one call per new token. Greedy at `--temperature=0` (default), else sampled from
softmax(logits / temperature) (optionally among the `--top_k` most likely tokens), seeded by
`--seed`. With `--compressed` or `--file`, every compressed kernel goes through
`pgf.deploy.intercept()` (`--impl`: auto, gather, expand, pallas); the finalized dense model and
its compressed form give the same tokens (tests/test_lm.py checks it).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import pgf


def load_model(workdir: str, step: int | None = None):
  """(config, model, tokenizer, recipe, raw params, masks, step) of a GPT training run."""
  from pgf.families import gpt as lm_family  # pylint: disable=g-import-not-at-top
  from pgf.analysis import runs  # pylint: disable=g-import-not-at-top
  config = runs.load_config(workdir)
  name = config.model.get("name")
  if name != lm_family.NAME:
    raise ValueError(f"workdir={workdir!r} trained config.model.name={name!r}; pgf.generate "
                     f"decodes the {lm_family.NAME!r} family (configs/lm_*.py)")
  tokenizer = lm_family.build_tokenizer(config.data)
  model = lm_family.build_model(config, lm_family.vocab_size(config, tokenizer))
  recipe = runs.load_recipe(workdir)
  state, step = runs.restore_checkpoint(workdir, step)
  params = jax.tree.map(jnp.asarray, state["params"])
  return config, model, tokenizer, recipe, params, runs.stored_masks(state, recipe), step


def finalized(params, recipe, masks=None):
  """The deployed dense model: every rule's kernel at its exact N:M target (trained masks)."""
  return pgf.finalize(params, recipe, masks=masks) if recipe.rules else params


def compressed(params, recipe, masks=None):
  """The finalized model with every N:M kernel an `NMKernel` (what `pgf.deploy` saves)."""
  from pgf import deploy  # pylint: disable=g-import-not-at-top
  if not recipe.rules:
    raise ValueError("the run's recipe has no sparsity rules: nothing to compress (a dense run)")
  return jax.tree.map(lambda x: x, deploy.compress_params(
      jax.tree.map(np.asarray, params), recipe, masks))


def generate_tokens(model, params, prompt_ids: np.ndarray, max_new_tokens: int,
                    temperature: float = 0.0, top_k: int = 0, seed: int = 0,
                    impl: str | None = None) -> np.ndarray:
  """(b, max_new_tokens) tokens continuing `prompt_ids` (b, P); a params tree holding
  `NMKernel`s decodes through `pgf.deploy.intercept(impl)`."""
  from pgf import deploy  # pylint: disable=g-import-not-at-top
  from pgf.models import gpt  # pylint: disable=g-import-not-at-top
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
  prompt_ids = np.asarray(prompt_ids, np.int32)
  if prompt_ids.ndim != 2 or prompt_ids.shape[1] < 1:
    raise ValueError(f"prompt shape {prompt_ids.shape}: need (batch, >= 1 token); an empty "
                     "prompt has nothing to continue")
  fn = jax.jit(functools.partial(gpt.generate, model, max_new_tokens=max_new_tokens,
                                 temperature=float(temperature), top_k=int(top_k)))
  has_nm = any(deploy.is_compressed(x)
               for x in jax.tree.leaves(params, is_leaf=deploy.is_compressed))
  rng = jax.random.key(seed)
  if has_nm:
    with deploy.intercept(impl):
      return np.asarray(fn(params, jnp.asarray(prompt_ids), rng=rng))
  return np.asarray(fn(params, jnp.asarray(prompt_ids), rng=rng))


def encode_prompt(tokenizer, prompt: str) -> np.ndarray:
  ids = tokenizer.encode(prompt)
  if not ids.size:
    raise ValueError("--prompt is empty: give at least one character to continue")
  return ids


def score(task, params, impl: str | None = None) -> dict[str, float]:
  """Eval metrics (bits per byte, loss and accuracy per token) of `params` on the task's eval
  split; a params tree with `NMKernel`s is evaluated through `pgf.deploy.intercept(impl)`."""
  from pgf import deploy  # pylint: disable=g-import-not-at-top
  eval_fn = jax.jit(task.eval_fn)
  sums: dict[str, Any] = {}
  with deploy.intercept(impl):
    for batch in task.eval_batches():
      out = jax.device_get(eval_fn(params, batch))
      for k, v in out.items():
        sums[k] = sums.get(k, 0.0) + float(v)
  tokens, nbytes = max(sums["tokens"], 1.0), max(sums["bytes"], 1.0)
  return {"bits_per_byte": sums["bits_per_byte"] / nbytes,
          "loss_per_token": sums["loss_per_token"] / tokens,
          "token_accuracy": sums["token_accuracy"] / tokens}


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from pgf import deploy  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if len(argv) > 1:
    sys.exit(f"pgf.generate: unexpected arguments {argv[1:]}")
  if f.prompt is None and not f.score:
    sys.exit("pgf.generate: give --prompt=TEXT (and/or --score)")
  try:
    config, model, tokenizer, recipe, params, masks, step = load_model(
        f.workdir, f.step if f.step >= 0 else None)
    dense = finalized(params, recipe, masks)
    if f.file:
      chosen, kind = deploy.load(f.file), f"compressed ({f.file})"
    elif f.compressed:
      chosen, kind = compressed(params, recipe, masks), "compressed (in memory)"
    else:
      chosen, kind = dense, "finalized dense"
    print(f"{f.workdir} step {step}, {recipe.method}, "
          f"{', '.join(f'{r.n}:{r.m}' for r in recipe.rules) or 'dense'}; {kind}", flush=True)
    if f.prompt is not None:
      ids = encode_prompt(tokenizer, f.prompt)
      out = generate_tokens(model, chosen, np.tile(ids[None], (f.num_samples, 1)),
                            f.max_new_tokens, f.temperature, f.top_k, f.seed, f.impl or None)
      for row in out:
        print("-" * 72)
        print(f.prompt + tokenizer.decode(row))
    if f.score:
      from pgf.families import gpt as lm_family  # pylint: disable=g-import-not-at-top
      task = lm_family.build_task(config)
      rows = [("finalized dense", dense)]
      if recipe.rules:
        rows.append(("compressed (nm_dot)", chosen if chosen is not dense
                     else compressed(params, recipe, masks)))
      print("| model | bits per byte | loss per token | token accuracy |\n|---|---|---|---|")
      for label, tree in rows:
        m = score(task, tree, f.impl or None)
        print(f"| {label} | {m['bits_per_byte']:.4f} | {m['loss_per_token']:.4f} | "
              f"{m['token_accuracy']:.4f} |")
  except ValueError as e:
    sys.exit(f"pgf.generate: {e}")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "A GPT training run (configs/lm_*.py).", required=True)
  flags.DEFINE_string("prompt", None, "Text to continue.")
  flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate (bytes for the demo).")
  flags.DEFINE_float("temperature", 0.0, "0: greedy; > 0: sample softmax(logits / T).")
  flags.DEFINE_integer("top_k", 0, "With temperature > 0: sample among the k most likely.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_integer("num_samples", 1, "Continuations of the prompt, decoded as one batch.")
  flags.DEFINE_integer("step", -1, "Checkpoint step (default: the newest).")
  flags.DEFINE_bool("compressed", False, "Decode with the N:M kernels compressed (nm_dot).")
  flags.DEFINE_string("file", "", "A pgf.deploy .safetensors file to decode with instead.")
  flags.DEFINE_string("impl", "", "nm_dot implementation: auto, gather, expand or pallas.")
  flags.DEFINE_bool("score", False, "Print bits per byte of the eval split, dense vs compressed.")
  app.run(main)
