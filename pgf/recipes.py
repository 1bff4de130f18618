"""`Recipe`: what to sparsify, with which method, and the schedules as functions of the step.

A recipe is data: a frozen dataclass validated at construction (every problem is reported at
once, each with its field name). The schedules are pure functions of the step that work on
Python ints (for logging and plots) and on traced int32 scalars (inside a jitted train step),
so a run's behaviour is a function of (recipe, step) alone and resumes exactly.

Phases over `total_steps` steps (step s counts from 0):

  [0, dense_steps)                    "dense":    D = 1, plain gradient
  [dense_steps, total - finetune)     "decay" (MDGF), "structure" (SDGF), "sparse" (STE, SR-STE)
  [total - finetune, ...)             "finetune": the target N:M as a hard mask (D = 0)

t = s - dense_steps counts steps since the end of the dense phase.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pgf.masks import parse_nm

__all__ = ["Recipe", "Rule", "METHODS", "MDGF_DECAYS", "SDGF_SCHEDULES", "as_step"]

INT32_MAX = 2**31 - 1
INT32_MIN = -2**31

MDGF_DECAYS = ("mdgf_linear", "mdgf_exp", "mdgf_cosine")
SDGF_SCHEDULES = ("sdgf_stepwise", "sdgf_geometric", "sdgf_custom")
METHODS = ("dense", "ste", "sr_ste") + MDGF_DECAYS + SDGF_SCHEDULES
GRADIENTS = ("decayed", "ste")
# D(j) is "approximately zero" at this value: exp(-beta * t_end) = 1e-3 matches the released
# ViT config (beta = 1e-4 per step, D ~ 5e-4 at 70% of ~109k steps).
DECAY_EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class Rule:
  """Sparsify every leaf whose "/"-joined path matches `pattern` (re.fullmatch) at n:m.

  Attributes:
    pattern: regular expression matched against the whole path, e.g.
      r"encoder/encoderblock_\\d+/mlp/fc[12]/kernel".
    n, m: the target pattern (keep n of every m).
    axis: the contracting axis of the kernel (int or tuple of axes flattened in order). None
      (the default) means axis 0 for a 2-D kernel (in, out) and is an error for leaves of rank
      >= 3, whose layout is ambiguous: (in, heads, head_dim) wants 0, a stacked (layers, in,
      out) kernel from `nn.scan` wants 1, (heads, head_dim, out) wants (0, 1), conv HWIO
      wants 2 or (0, 1, 2).
    allow_1d: a rule matching a 1-D leaf (bias, norm scale) is an error unless this is True,
      because broad patterns such as r"fc1/.*" match biases by accident.
    stages: optional SDGF stage list ((n, m), ...) for this rule (method "sdgf_custom").
    sdgf_k: this rule's SDGF-geometric start multiplier (power of two), overriding the recipe's
      `sdgf_k`; None uses the recipe's. `pgf.fit_sdgf_k(params, recipe)` sets it where the
      recipe's k would give a first stage k*N:k*M whose M does not divide a matched kernel.
  """
  pattern: str
  n: int
  m: int
  axis: int | tuple[int, ...] | None = None
  stages: tuple[tuple[int, int], ...] | None = None
  allow_1d: bool = False
  sdgf_k: int | None = None

  @property
  def nm(self) -> str:
    return f"{self.n}:{self.m}"


RULE_OPTIONS = ("axis", "stages", "allow_1d", "sdgf_k")


def _as_rule(spec: Any, index: int, problems: list[str]) -> Rule | None:
  """Accepts Rule, (regex, "N:M"), (regex, "N:M", axis) or (regex, "N:M", {options})."""
  where = f"rules[{index}]"
  if isinstance(spec, Rule):
    return spec
  if isinstance(spec, dict) and "pattern" in spec:
    problems.append(f"{where}={spec!r} is the to_dict() form of a rule: build the recipe with "
                    "pgf.Recipe.from_dict(d), not pgf.Recipe(**d)")
    return None
  if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3):
    problems.append(f"{where}={spec!r}: expected (regex, 'N:M'[, axis or options dict]) "
                    "or pgf.Rule")
    return None
  pattern, nm = spec[0], spec[1]
  options = spec[2] if len(spec) == 3 else {}
  if not isinstance(options, dict):
    options = {"axis": options}
  unknown = set(options) - set(RULE_OPTIONS)
  if unknown:
    problems.append(f"{where}: unknown rule options {_with_suggestions(unknown, RULE_OPTIONS)} "
                    f"(use one of {', '.join(map(repr, RULE_OPTIONS))})")
  try:
    n, m = parse_nm(nm)
  except (ValueError, TypeError):
    problems.append(f"{where}: N:M {nm!r} must look like '1:16'")
    return None
  stages = options.get("stages")
  if stages is not None:
    try:
      stages = tuple(parse_nm(s) for s in stages)
    except (ValueError, TypeError):
      problems.append(f"{where}: stages {stages!r} must be a sequence of 'N:M' strings")
      stages = None
  axis = options.get("axis")
  if isinstance(axis, list):
    axis = tuple(axis)
  allow_1d = options.get("allow_1d", False)
  if not isinstance(allow_1d, bool):
    problems.append(f"{where}: allow_1d={allow_1d!r} must be True or False")
    allow_1d = False
  return Rule(pattern, n, m, axis, stages, allow_1d, options.get("sdgf_k"))


def _with_suggestions(unknown, known) -> str:
  """"['axes' (did you mean 'axis'?)]" for a set of unknown keys."""
  out = []
  for key in sorted(map(str, unknown)):
    close = difflib.get_close_matches(key, list(known), n=1)
    out.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
  return "[" + ", ".join(out) + "]"


def _power_of_two(k) -> bool:
  return (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1
          and not k & (k - 1))


def _check_nm(n: int, m: int, where: str, problems: list[str]) -> None:
  if m < 1:
    problems.append(f"{where}: M must be >= 1, got {n}:{m}")
  elif not 1 <= n <= m:
    problems.append(f"{where}: need 1 <= N <= M, got {n}:{m}")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A Progressive Gradient Flow recipe: which leaves, which N:M, which method and schedule.

  The forward weights are W~ = W ⊙ (Phi + D(step)·(1 − Phi)), Phi the N:M mask of |W| at the
  pattern in force; docs/method.md tabulates D, the pattern and the gradient per method and
  phase.

  Attributes:
    method: "dense", "ste", "sr_ste", "mdgf_linear", "mdgf_exp", "mdgf_cosine",
      "sdgf_stepwise", "sdgf_geometric", "sdgf_custom", or an MDGF decay combined with an SDGF
      schedule as "mdgf_exp+sdgf_geometric": the pattern follows the SDGF stages while the
      positions pruned at the current stage are scaled by the MDGF decay D(j).
    rules: ((regex, "N:M"), ...) or pgf.Rule objects; a third tuple entry gives the axis (int
      or tuple) or a dict {"axis": ..., "stages": ("8:16", "4:16", ...), "allow_1d": bool}.
      First match wins. Leaves of rank >= 3 need an explicit axis (see `Rule`).
    total_steps: number of training steps the schedules span.
    dense_fraction: fraction of steps trained dense first (the paper finds a short one
      essential).
    finetune_fraction: fraction of final steps trained with the target hard mask.
    decay_coefficient: the paper's beta (per step, counted from the end of the dense phase)
      for mdgf_linear / mdgf_exp. None derives it so that D reaches ~0 (1e-3 for exp, 0 for
      linear and cosine) at `decay_end_fraction` of training.
    decay_end_fraction: where D(j) should reach ~0 when decay_coefficient is None (paper: 0.7).
    gradient: "decayed" (MDGF gradient to pruned weights scaled by D, the design card's reading)
      or "ste" (plain straight-through, what the authors' code does). MDGF methods only.
    sr_ste_lambda: SR-STE's lambda_W.
    mask_update_every: recompute masks from |W| every this many steps (1 = every step). Above
      1 the masks live in the optimizer state, which `pgf.sparsify(params, recipe, opt_state)`
      and `pgf.finalize(params, recipe, opt_state)` read them from.
    sdgf_k: geometric schedule start multiplier (power of two): k*N:k*M -> ... -> N:M.
    sdgf_stages: stage list ("N:M", ...) for method "sdgf_custom", used by every rule that has
      no stages of its own; its last stage must equal each such rule's target.
  """
  method: str
  rules: tuple = ()
  total_steps: int = 10_000
  dense_fraction: float = 0.05
  finetune_fraction: float = 0.1
  decay_coefficient: float | None = None
  decay_end_fraction: float = 0.7
  gradient: str = "decayed"
  sr_ste_lambda: float = 2e-4
  mask_update_every: int = 1
  sdgf_k: int = 8
  sdgf_stages: tuple[str, ...] | None = None

  def __post_init__(self):
    problems: list[str] = []
    rules = []
    if isinstance(self.rules, (str, bytes)) or not isinstance(self.rules, Sequence):
      problems.append(f"rules={self.rules!r}: expected a sequence of (regex, 'N:M') pairs")
    else:
      for i, spec in enumerate(self.rules):
        rule = _as_rule(spec, i, problems)
        if rule is not None:
          rules.append(rule)
    object.__setattr__(self, "rules", tuple(rules))
    if self.sdgf_stages is not None:
      object.__setattr__(self, "sdgf_stages", tuple(self.sdgf_stages))
    self._validate(problems)
    if problems:
      raise ValueError("Invalid pgf.Recipe:\n  - " + "\n  - ".join(problems))

  # ----------------------------------------------------------------------------- validation
  def _validate(self, problems: list[str]) -> None:
    mdgf, sdgf = self._split_method(problems)
    for i, rule in enumerate(self.rules):
      where = f"rules[{i}] ({rule.pattern!r}, '{rule.nm}')"
      try:
        re.compile(rule.pattern)
      except (re.error, TypeError) as e:
        problems.append(f"{where}: invalid regex: {e}")
      _check_nm(rule.n, rule.m, where, problems)
      if rule.axis is not None and (
          not isinstance(rule.axis, (int, tuple)) or isinstance(rule.axis, bool) or (
              isinstance(rule.axis, tuple) and not all(
                  isinstance(a, int) and not isinstance(a, bool) for a in rule.axis))):
        problems.append(f"{where}: axis={rule.axis!r} must be an int, a tuple of ints or None")
      if rule.sdgf_k is not None and not _power_of_two(rule.sdgf_k):
        problems.append(f"{where}: sdgf_k={rule.sdgf_k!r} must be a power of two >= 1")
      if rule.stages is not None:
        if sdgf != "sdgf_custom":
          problems.append(f"{where}: per-rule stages need method 'sdgf_custom' (or "
                          f"'mdgf_*+sdgf_custom'), got method={self.method!r}")
        self._check_stages(rule.stages, rule, f"{where} stages", problems)
    if sdgf == "sdgf_custom":
      shared = None
      if self.sdgf_stages is not None:
        try:
          shared = tuple(parse_nm(s) for s in self.sdgf_stages)
        except (ValueError, TypeError):
          problems.append(f"sdgf_stages={self.sdgf_stages!r}: expected 'N:M' strings")
      for i, rule in enumerate(self.rules):
        if rule.stages is None:
          if shared is None:
            problems.append(f"sdgf_stages=None: method {self.method!r} needs sdgf_stages or "
                            f"per-rule stages (rules[{i}] has none)")
          else:
            self._check_stages(shared, rule, f"sdgf_stages (for rules[{i}])", problems)
    elif self.sdgf_stages is not None:
      problems.append(f"sdgf_stages={self.sdgf_stages!r} is only used by 'sdgf_custom'")
    if (not isinstance(self.total_steps, (int, np.integer)) or isinstance(self.total_steps, bool)
        or not 0 < self.total_steps < INT32_MAX):
      problems.append(f"total_steps={self.total_steps!r}: must be a positive int below 2**31 "
                      "(steps are int32)")
    for name in ("dense_fraction", "finetune_fraction"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        problems.append(f"{name}={value!r}: must be in [0, 1]")
    fractions_ok = all(isinstance(getattr(self, f), (int, float)) and 0 <= getattr(self, f) <= 1
                       for f in ("dense_fraction", "finetune_fraction"))
    if fractions_ok and self.dense_fraction + self.finetune_fraction > 1.0:
      problems.append(f"dense_fraction + finetune_fraction = "
                      f"{self.dense_fraction + self.finetune_fraction:g}: must not exceed 1")
    total_ok = (isinstance(self.total_steps, (int, np.integer)) and not isinstance(
        self.total_steps, bool) and 0 < self.total_steps < INT32_MAX)
    if fractions_ok and total_ok and (mdgf or sdgf) and self.decay_steps < 1:
      problems.append(f"dense_fraction={self.dense_fraction}, finetune_fraction="
                      f"{self.finetune_fraction}, total_steps={self.total_steps}: method "
                      f"{self.method!r} needs at least one step between the dense and "
                      "fine-tune phases")
    if self.gradient not in GRADIENTS:
      problems.append(f"gradient={self.gradient!r}: must be one of {GRADIENTS}")
    if self.decay_coefficient is not None and not (
        isinstance(self.decay_coefficient, (int, float)) and self.decay_coefficient > 0):
      problems.append(f"decay_coefficient={self.decay_coefficient!r}: must be > 0 or None")
    if not isinstance(self.decay_end_fraction, (int, float)) or not (
        0 < self.decay_end_fraction <= 1):
      problems.append(f"decay_end_fraction={self.decay_end_fraction!r}: must be in (0, 1]")
    elif (mdgf and self.decay_coefficient is None and fractions_ok and total_ok
          and self._decay_end_steps() < 1):
      problems.append(f"decay_end_fraction={self.decay_end_fraction}: must lie after the dense "
                      f"phase (dense_fraction={self.dense_fraction})")
    if not isinstance(self.sr_ste_lambda, (int, float)) or self.sr_ste_lambda < 0:
      problems.append(f"sr_ste_lambda={self.sr_ste_lambda!r}: must be >= 0")
    if not isinstance(self.mask_update_every, (int, np.integer)) or self.mask_update_every < 1:
      problems.append(f"mask_update_every={self.mask_update_every!r}: must be an int >= 1")
    if not _power_of_two(self.sdgf_k):
      problems.append(f"sdgf_k={self.sdgf_k!r}: must be a power of two >= 1")
    if self.method != "dense" and not self.rules and not problems:
      problems.append(f"rules=(): method {self.method!r} needs at least one rule")

  def _check_stages(self, stages, rule: Rule, where: str, problems: list[str]) -> None:
    if not stages:
      problems.append(f"{where}: must not be empty")
      return
    for n, m in stages:
      _check_nm(n, m, where, problems)
    if tuple(stages[-1]) != (rule.n, rule.m):
      problems.append(f"{where}: last stage {stages[-1][0]}:{stages[-1][1]} must equal the "
                      f"rule's target {rule.nm}")

  def _split_method(self, problems: list[str] | None = None) -> tuple[str | None, str | None]:
    """Returns (mdgf part or None, sdgf part or None) of the method name."""
    method = self.method
    if not isinstance(method, str):
      if problems is not None:
        problems.append(f"method={method!r}: must be a string")
      return None, None
    parts = method.split("+")
    if len(parts) == 1 and method in METHODS:
      return (method if method in MDGF_DECAYS else None,
              method if method in SDGF_SCHEDULES else None)
    if len(parts) == 2 and parts[0] in MDGF_DECAYS and parts[1] in SDGF_SCHEDULES:
      return parts[0], parts[1]
    if problems is not None:
      problems.append(f"method={method!r}: must be one of {METHODS} or "
                      "'<mdgf_*>+<sdgf_*>' (e.g. 'mdgf_exp+sdgf_stepwise')")
    return None, None

  # ----------------------------------------------------------------------------- phases
  @property
  def mdgf(self) -> str | None:
    return self._split_method()[0]

  @property
  def sdgf(self) -> str | None:
    return self._split_method()[1]

  @property
  def dense_steps(self) -> int:
    return int(round(self.dense_fraction * self.total_steps))

  @property
  def finetune_steps(self) -> int:
    return int(round(self.finetune_fraction * self.total_steps))

  @property
  def decay_steps(self) -> int:
    """Length of the middle phase (decay / structure / sparse)."""
    return self.total_steps - self.dense_steps - self.finetune_steps

  @property
  def finetune_start(self) -> int:
    return self.total_steps - self.finetune_steps

  def _decay_end_steps(self) -> int:
    return int(round(self.decay_end_fraction * self.total_steps)) - self.dense_steps

  @property
  def beta(self) -> float:
    """The decay coefficient in use (per step), derived when `decay_coefficient` is None."""
    if self.decay_coefficient is not None:
      return float(self.decay_coefficient)
    t_end = max(self._decay_end_steps(), 1)
    if self.mdgf == "mdgf_exp":
      return math.log(1.0 / DECAY_EPSILON) / t_end
    return 1.0 / t_end  # linear; cosine uses 1 / horizon too

  def phase(self, step: int) -> str:
    """Phase name at a (concrete) step, for logs."""
    step = int(as_step(step))
    if self.method == "dense":
      return "dense"
    if step < self.dense_steps:
      return "dense"
    if step >= self.finetune_start:
      return "finetune"
    if self.mdgf:
      return "decay"
    if self.sdgf:
      return "structure"
    return "sparse"

  # ----------------------------------------------------------------------------- schedules
  def decay(self, step):
    """D(j): the scale of pruned weights in the forward pass (float32; jnp, traceable)."""
    step = as_step(step)
    if self.method == "dense":
      return jnp.float32(1.0)
    t = (step - self.dense_steps).astype(jnp.float32)
    if self.mdgf == "mdgf_linear":
      d = jnp.maximum(1.0 - self.beta * t, 0.0)
    elif self.mdgf == "mdgf_exp":
      d = jnp.exp(-self.beta * t)
    elif self.mdgf == "mdgf_cosine":
      horizon = 1.0 / self.beta
      d = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(t / horizon, 0.0, 1.0)))
    else:
      d = jnp.float32(0.0)
    d = jnp.where(step < self.dense_steps, 1.0, d)
    return jnp.where(step >= self.finetune_start, 0.0, d).astype(jnp.float32)

  def stages(self, rule: Rule | int) -> tuple[tuple[int, int], ...]:
    """The (n, m) patterns a rule goes through in the middle phase (one for non-SDGF)."""
    if isinstance(rule, int):
      rule = self.rules[rule]
    n, m = rule.n, rule.m
    if self.sdgf == "sdgf_stepwise":
      # (M-1):M, then halve from M/2 down to N: 1:16 -> 15:16, 8:16, 4:16, 2:16, 1:16.
      counts = [m - 1]
      k = m // 2
      while k > n:
        counts.append(k)
        k //= 2
      counts.append(n)
      return tuple((c, m) for c in dict.fromkeys(c for c in counts if c >= n))
    if self.sdgf == "sdgf_geometric":
      # k*N:k*M -> ... -> 2N:2M -> N:M (1:8, k=16: 16:128, 8:64, 4:32, 2:16, 1:8).
      out, k = [], self.sdgf_k if rule.sdgf_k is None else rule.sdgf_k
      while k >= 1:
        out.append((k * n, k * m))
        k //= 2
      return tuple(out)
    if self.sdgf == "sdgf_custom":
      if rule.stages is not None:
        return tuple(rule.stages)
      return tuple(parse_nm(s) for s in self.sdgf_stages)
    return ((n, m),)

  def stage_index(self, rule: Rule | int, step):
    """Index into `stages(rule)` at `step` (int32, traceable): equal intervals over the
    middle phase; the last stage continues through fine-tuning."""
    count = len(self.stages(rule))
    step = as_step(step)
    if count == 1:
      return jnp.zeros((), jnp.int32)
    t = step - self.dense_steps
    # Integer arithmetic so stage boundaries are exact and identical in and out of jit.
    index = (jnp.maximum(t, 0) * count) // max(self.decay_steps, 1)
    index = jnp.where(step >= self.finetune_start, count - 1, index)
    return jnp.clip(index, 0, count - 1).astype(jnp.int32)

  def pattern(self, rule: Rule | int, step: int) -> tuple[int, int]:
    """The (n, m) in force for a rule at a concrete step ((m, m) means dense)."""
    rule_obj = self.rules[rule] if isinstance(rule, int) else rule
    if self.method == "dense" or int(step) < self.dense_steps:
      return (rule_obj.m, rule_obj.m)
    stages = self.stages(rule_obj)
    return stages[int(self.stage_index(rule_obj, step))]

  def schedule(self, step: int) -> dict[str, Any]:
    """Everything a log line or plot needs at a concrete step."""
    patterns, densities = {}, {}
    decay = float(self.decay(step))
    for rule in self.rules:
      n, m = self.pattern(rule, step)
      patterns[rule.pattern] = f"{n}:{m}"
      # Effective density of the forward weights: kept share plus D times the pruned share.
      densities[rule.pattern] = n / m + decay * (1 - n / m)
    return {"step": int(step), "phase": self.phase(step), "decay": decay,
            "patterns": patterns, "densities": densities}

  def to_dict(self) -> dict[str, Any]:
    """A JSON-friendly description (for saving next to checkpoints)."""
    out = dataclasses.asdict(self)
    out["rules"] = [
        {"pattern": r.pattern, "nm": r.nm, "axis": r.axis, "allow_1d": r.allow_1d,
         "stages": None if r.stages is None else [f"{a}:{b}" for a, b in r.stages],
         "sdgf_k": r.sdgf_k}
        for r in self.rules]
    return out

  @classmethod
  def from_dict(cls, data: dict[str, Any]) -> "Recipe":
    """The recipe `to_dict` described, e.g. a run's saved recipe.json after `json.load`."""
    if not isinstance(data, dict):
      raise TypeError(f"Recipe.from_dict expects a dict, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields
    if unknown:
      raise ValueError(f"recipe dict has unknown fields {_with_suggestions(unknown, fields)} "
                       f"(known: {sorted(fields)})")
    kwargs = dict(data)
    rules = []
    for i, rule in enumerate(kwargs.get("rules", ())):
      if isinstance(rule, dict):
        if "pattern" not in rule or "nm" not in rule:
          raise ValueError(f"recipe rules[{i}]={rule!r}: needs 'pattern' and 'nm'")
        known = ("pattern", "nm") + RULE_OPTIONS
        unknown = set(rule) - set(known)
        if unknown:
          raise ValueError(f"recipe rules[{i}] has unknown keys "
                           f"{_with_suggestions(unknown, known)} (known: {list(known)})")
        options = {k: rule[k] for k in RULE_OPTIONS if rule.get(k) is not None}
        if isinstance(options.get("axis"), list):
          options["axis"] = tuple(options["axis"])
        if options.get("stages"):
          options["stages"] = tuple(options["stages"])
        rule = (rule["pattern"], rule["nm"], options)
      elif isinstance(rule, list):
        rule = tuple(rule)
      rules.append(rule)
    kwargs["rules"] = tuple(rules)
    if kwargs.get("sdgf_stages") is not None:
      kwargs["sdgf_stages"] = tuple(kwargs["sdgf_stages"])
    return cls(**kwargs)

  def rule_for(self, path: str) -> int | None:
    """Index of the first rule whose regex fully matches `path`, or None."""
    for i, rule in enumerate(self.rules):
      if re.fullmatch(rule.pattern, path):
        return i
    return None


def as_step(step, scalar: bool = False) -> jax.Array:
  """`step` as int32, refusing what would silently change the schedule.

  A float step (10.7) would be truncated and a bool is a mix-up of arguments: the step must be
  an integer (Python int, NumPy/JAX integer of any width, traced int). Values beyond the int32
  range saturate instead of wrapping (a uint32 or int64 step >= 2**31 is past any schedule's
  end, never back in its dense phase). Arrays of steps are allowed for the schedules (plots
  evaluate them over a range) unless `scalar`.
  """
  if isinstance(step, (bool, np.bool_)):
    raise TypeError(f"step={step!r}: must be an integer, got a bool")
  if isinstance(step, (int, np.integer)):
    return jnp.asarray(min(max(int(step), INT32_MIN), INT32_MAX), jnp.int32)
  dtype, shape = getattr(step, "dtype", None), getattr(step, "shape", None)
  if dtype is None or shape is None:
    raise TypeError(f"step={step!r} ({type(step).__name__}): must be an integer step count, "
                    "or pass the optimizer state (pgf.sparsify(params, recipe, opt_state))")
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"step has dtype {dtype}: must be an integer (a float step would be "
                    "truncated); pass the optimizer state: pgf.sparsify(params, recipe, "
                    "opt_state)")
  if scalar and tuple(shape) != ():
    raise TypeError(f"step has shape {tuple(shape)}: must be a scalar")
  info = np.iinfo(np.dtype(dtype))
  if isinstance(step, np.ndarray):
    return jnp.asarray(np.clip(step, max(info.min, INT32_MIN), min(info.max, INT32_MAX))
                       .astype(np.int32))
  step = jnp.asarray(step)
  if info.max > INT32_MAX:
    step = jnp.minimum(step, jnp.asarray(INT32_MAX, step.dtype))
  if info.min < INT32_MIN:
    step = jnp.maximum(step, jnp.asarray(INT32_MIN, step.dtype))
  return step.astype(jnp.int32)
