r"""FLOPs of N:M-sparse transformers and CNNs: inference per example, and training for a recipe.

    python -m pgf.analysis.flops --config=configs/vit_1_16.py
    python -m pgf.analysis.flops --config=configs/vit_1_16.py:demo --class_token
    python -m pgf.analysis.flops --config=configs/wmt_1_16.py   # T5-block WMT model, 256 + 256

Counting convention (it reproduces the paper's Appendix D; see tests/test_flops.py):

* a matmul of an (a, k) by a (k, b) operand costs 2·a·k·b FLOPs (a multiply and an add per
  multiply-accumulate);
* a kernel under an N:M rule costs its dense FLOPs times N/M (only kept weights are multiplied);
* counted are the transformer's matmuls: attention (Q, K, V projections, the QK^T scores, the
  weighted sum of V, the output projection) and the MLP. Softmax, norms, biases, activations
  and residual adds are not. The patch embedding and the classifier head (T5: the logits
  projection) are listed as the groups "embedding" and "head" and left out of totals unless
  `groups` names them;
* a convolution is the matmul of its im2col form: (output pixels, kh·kw·I) by (kh·kw·I, O), so
  a ResNet's convs (group "conv", stem included) cost 2·Ho·Wo·kh·kw·I·O and N:M scales them by
  N/M whether the groups run along I (axis 2) or over kh·kw·I (axes (0, 1, 2)); the classifier is
  "head". ResNet-50 at 224 px: 8.18 GFLOPs of convs (4.09 G multiply-accumulates);
* 1 GFLOP = 10^9 FLOPs (not 2^30);
* ViT tokens are the patches only, 196 at 224/16: the class token is not counted
  (`class_token=True` counts it; then self-attention is 12.59 GFLOPs, not the paper's 12.51).

ViT-B/16 at 224 then costs 12.5143 GFLOPs of self-attention and 22.1963 · N/M of MLP:
dense 34.7106, 2:4 23.6124, 1:4 18.0634, 1:8 15.2888, 1:16 13.9016, 1:32 13.2079,
1:128 12.6877. Rounded, these are the paper's numbers except 1:32, which the paper prints as
13.20 (13.2079 truncated). No count that is affine in N/M rounds to all seven printed values
(1:8, 1:32 and 1:128 contradict each other), so the paper must have truncated that one entry.

Training FLOPs of a recipe sum, over its steps, forward + backward, with the backward costing
twice the forward (input and weight gradients, each a matmul of the forward's size; the paper's
convention). A step's forward density follows the recipe (`pgf.analysis.schedule`): 1 in the
dense phase and whenever D(j) > 0 (MDGF keeps every weight non-zero in the forward pass, so a
kernel cannot skip any), the stage's N/M in SDGF, the target N/M for STE / SR-STE and in
fine-tuning. `dense_weight_gradient=True` instead charges the weight gradient at dense cost,
which is what a straight-through estimator needs (it updates pruned weights too).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pgf.analysis.schedule import schedule_arrays
from pgf.masks import normalize_axes
from pgf.recipes import Recipe

__all__ = ["Matmul", "vit_matmuls", "t5_matmuls", "swin_matmuls",
           "resnet_matmuls", "matmuls_from_config", "as_recipe",
           "inference_flops", "training_flops_per_step", "training_flops", "COUNTED_GROUPS",
           "PAPER_PATTERNS", "GFLOP"]

GFLOP = 1e9
# "merging": SwinV2's patch merging (dense linear layers between stages); "conv": ResNet's
# convolutions (as im2col matmuls). ViT and T5 have neither.
COUNTED_GROUPS = ("attention", "mlp", "merging", "conv")
ALL_GROUPS = ("attention", "mlp", "merging", "conv", "embedding", "head")
# The FF patterns of the paper's Appendix D table.
PAPER_PATTERNS = ("2:4", "1:4", "1:8", "1:16", "1:32", "1:128")


@dataclasses.dataclass(frozen=True)
class Matmul:
  """One matmul of a forward pass, per example (image or sequence).

  Attributes:
    name: the kernel's parameter path (what sparsity rules match), or for a product of two
      activations the layer path plus "/scores" or "/weighted_sum".
    group: "attention", "mlp", "merging", "conv", "embedding" or "head".
    rows: rows of the activation operand (tokens).
    k: contracting length (what an N:M group of M must divide).
    cols: output features.
    kernel: False for activation x activation products, which no rule can sparsify.
    shape: the kernel's own shape when its N:M groups may cover only part of k (a conv's HWIO:
      a rule's axis then picks the grouped length); empty for a plain (k, cols) kernel.
  """
  name: str
  group: str
  rows: int
  k: int
  cols: int
  kernel: bool = True
  shape: tuple[int, ...] = ()

  @property
  def flops(self) -> int:
    """Dense FLOPs: 2 per multiply-accumulate."""
    return 2 * self.rows * self.k * self.cols


# ----------------------------------------------------------------------------- models
def vit_matmuls(dims: str | Mapping[str, int] = "B/16", image_size: int = 224,
                channels: int = 3, num_classes: int = 1000,
                class_token: bool = False) -> tuple[Matmul, ...]:
  """The matmuls of a pgf ViT (pgf/models/vit.py) on one image.

  Args:
    dims: a variant such as "B/16", or a dict with width, depth, mlp_dim, num_heads and
      patch_size (e.g. `decode_variant("Ti/4")` with overrides).
    image_size: square input side; must be divisible by the patch size.
    channels, num_classes: only the "embedding" and "head" groups depend on them.
    class_token: count the class token as a token (the paper does not).
  """
  from pgf.models.vit import decode_variant  # pylint: disable=g-import-not-at-top
  dims = decode_variant(dims) if isinstance(dims, str) else dict(dims)
  missing = {"width", "depth", "mlp_dim", "num_heads", "patch_size"} - set(dims)
  if missing:
    raise ValueError(f"ViT dims {dims!r} lack {sorted(missing)} (a variant like 'B/16' "
                     "names the patch size after the slash)")
  width, patch = int(dims["width"]), int(dims["patch_size"])
  if image_size % patch:
    raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch}")
  if width % dims["num_heads"]:
    raise ValueError(f"width={width} is not divisible by num_heads={dims['num_heads']}")
  patches = (image_size // patch) ** 2
  tokens = patches + int(bool(class_token))
  out = [Matmul("embedding/kernel", "embedding", patches, patch * patch * channels, width)]
  for i in range(int(dims["depth"])):
    block = f"encoder/encoderblock_{i}"
    for name in ("query", "key", "value"):
      out.append(Matmul(f"{block}/attn/{name}/kernel", "attention", tokens, width, width))
    # Per head: (T, head_dim) x (head_dim, T) scores, then (T, T) x (T, head_dim); summed over
    # heads that is T x width x T MACs each.
    out.append(Matmul(f"{block}/attn/scores", "attention", tokens, width, tokens, False))
    out.append(Matmul(f"{block}/attn/weighted_sum", "attention", tokens, tokens, width, False))
    out.append(Matmul(f"{block}/attn/out/kernel", "attention", tokens, width, width))
    out.append(Matmul(f"{block}/mlp/fc1/kernel", "mlp", tokens, width, int(dims["mlp_dim"])))
    out.append(Matmul(f"{block}/mlp/fc2/kernel", "mlp", tokens, int(dims["mlp_dim"]), width))
  out.append(Matmul("head/kernel", "head", 1, width, num_classes))
  return tuple(out)


def swin_matmuls(dims: str | Mapping[str, Any] = "B", image_size: int = 256,
                 window_size: int = 16, patch_size: int = 4, channels: int = 3,
                 num_classes: int = 1000, mlp_ratio: float = 4.0) -> tuple[Matmul, ...]:
  """The matmuls of a pgf SwinV2 (pgf/models/swin.py) on one image.

  Attention is within windows: each of a stage's T tokens attends to the N = w² tokens of its
  window, so the scores and the weighted sum cost T·N·width MACs each (not T²·width). The
  window is min(window_size, feature-map side), as the model uses it. Patch merging at the start
  of stages 1.. is a (T/4, 4C) x (4C, 2C) matmul, group "merging". The continuous position-bias
  MLP runs on a constant table (once per step, not per image; a deployed model caches its
  output), so it is not counted.
  """
  from pgf.models import swin as swin_lib  # pylint: disable=g-import-not-at-top
  dims = swin_lib.decode_variant(dims) if isinstance(dims, str) else dict(dims)
  missing = {"embed_dim", "depths", "num_heads"} - set(dims)
  if missing:
    raise ValueError(f"SwinV2 dims {dims!r} lack {sorted(missing)}")
  if image_size % patch_size:
    raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}")
  geometry = swin_lib.stage_geometry(image_size // patch_size, window_size, len(dims["depths"]))
  width = int(dims["embed_dim"])
  side0 = image_size // patch_size
  out = [Matmul("patch_embed/proj/kernel", "embedding", side0 * side0,
                patch_size * patch_size * channels, width)]
  for i, (depth, (side, window, _)) in enumerate(zip(dims["depths"], geometry)):
    stage = f"stages_{i}"
    if i:
      out.append(Matmul(f"{stage}/downsample/reduction/kernel", "merging", side * side,
                        4 * width, 2 * width))
      width *= 2
    tokens, per_window = side * side, window * window
    mlp = int(width * mlp_ratio)
    for j in range(depth):
      block = f"{stage}/blocks_{j}"
      for name in ("query", "key", "value"):
        out.append(Matmul(f"{block}/attn/{name}/kernel", "attention", tokens, width, width))
      out.append(Matmul(f"{block}/attn/scores", "attention", tokens, width, per_window, False))
      out.append(Matmul(f"{block}/attn/weighted_sum", "attention", tokens, per_window, width,
                        False))
      out.append(Matmul(f"{block}/attn/out/kernel", "attention", tokens, width, width))
      out.append(Matmul(f"{block}/mlp/fc1/kernel", "mlp", tokens, width, mlp))
      out.append(Matmul(f"{block}/mlp/fc2/kernel", "mlp", tokens, mlp, width))
  out.append(Matmul("head/kernel", "head", 1, width, num_classes))
  return tuple(out)


def resnet_matmuls(stage_sizes: Sequence[int] = (3, 4, 6, 3), width: int = 64,
                   stem: str = "imagenet", image_size: int = 224, channels: int = 3,
                   num_classes: int = 1000) -> tuple[Matmul, ...]:
  """The convolutions (as im2col matmuls) and the head of a pgf ResNet (pgf/models/resnet.py).

  Defaults are ResNet-50 at 224 px; `stem="cifar"` with image_size=32 is the CIFAR variant.
  """
  if stem not in ("imagenet", "cifar"):
    raise ValueError(f"stem={stem!r}: 'imagenet' or 'cifar'")
  if not isinstance(image_size, (int, np.integer)) or image_size <= 0:
    raise ValueError(f"image_size={image_size!r}: must be a positive int")
  out = []

  def conv(name, size, k, cin, cout, stride=1):
    side = -(-size // stride)  # SAME padding (and the explicit 1-pixel pads): ceil(size / s)
    out.append(Matmul(name, "conv", side * side, k * k * cin, cout, shape=(k, k, cin, cout)))
    return side

  if stem == "imagenet":
    size = conv("stem_conv/kernel", image_size, 7, channels, width, 2)
    size = -(-size // 2)  # 3x3 stride-2 max-pool (no FLOPs counted)
  else:
    size = conv("stem_conv/kernel", image_size, 3, channels, width)
  cin = width
  for s, blocks in enumerate(stage_sizes):
    mid = width * 2**s
    for b in range(blocks):
      stride = 2 if s > 0 and b == 0 else 1
      prefix = f"stage_{s}/block_{b}"
      conv(f"{prefix}/conv_0/kernel", size, 1, cin, mid)
      new_size = conv(f"{prefix}/conv_1/kernel", size, 3, mid, mid, stride)
      conv(f"{prefix}/conv_2/kernel", new_size, 1, mid, 4 * mid)
      if b == 0 and (cin != 4 * mid or stride != 1):
        conv(f"{prefix}/proj/kernel", size, 1, cin, 4 * mid, stride)
      size, cin = new_size, 4 * mid
  out.append(Matmul("head/kernel", "head", 1, cin, num_classes))
  return tuple(out)


def _attention(prefix: str, q_len: int, kv_len: int, emb: int, inner: int) -> list[Matmul]:
  return [
      Matmul(f"{prefix}/query/kernel", "attention", q_len, emb, inner),
      Matmul(f"{prefix}/key/kernel", "attention", kv_len, emb, inner),
      Matmul(f"{prefix}/value/kernel", "attention", kv_len, emb, inner),
      Matmul(f"{prefix}/scores", "attention", q_len, inner, kv_len, False),
      Matmul(f"{prefix}/weighted_sum", "attention", q_len, kv_len, inner, False),
      Matmul(f"{prefix}/out/kernel", "attention", q_len, inner, emb),
  ]


def _t5_mlp(prefix: str, length: int, emb: int, mlp: int) -> list[Matmul]:
  return [Matmul(f"{prefix}/mlp/wi_0/kernel", "mlp", length, emb, mlp),
          Matmul(f"{prefix}/mlp/wi_1/kernel", "mlp", length, emb, mlp),
          Matmul(f"{prefix}/mlp/wo/kernel", "mlp", length, mlp, emb)]


def t5_matmuls(config: Any = "base", input_length: int = 512,
               target_length: int = 114) -> tuple[Matmul, ...]:
  """The matmuls of a pgf T5 (pgf/models/t5.py) on one (input, target) sequence pair.

  Args:
    config: a `T5Config` or a variant name ("tiny", "small", "base", "large").
    input_length, target_length: encoder and decoder tokens. Decoder self-attention is
      counted over the full target_length² scores (a causal mask does not skip the matmul).

  Cross-attention keys and values are computed once from the encoder output. The token
  embedding is a lookup (no FLOPs); the logits projection is the "head" group.
  """
  from pgf.models import t5 as t5_lib  # pylint: disable=g-import-not-at-top
  c = t5_lib.get_config(config) if isinstance(config, str) else config
  for name, value in (("input_length", input_length), ("target_length", target_length)):
    if not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f"{name}={value!r}: must be a positive int")
  emb, inner, mlp = c.emb_dim, c.num_heads * c.head_dim, c.mlp_dim
  out = []
  for i in range(c.num_encoder_layers):
    layer = f"encoder/layers_{i}"
    out += _attention(f"{layer}/attention", input_length, input_length, emb, inner)
    out += _t5_mlp(layer, input_length, emb, mlp)
  for i in range(c.num_decoder_layers):
    layer = f"decoder/layers_{i}"
    out += _attention(f"{layer}/self_attention", target_length, target_length, emb, inner)
    out += _attention(f"{layer}/encoder_decoder_attention", target_length, input_length, emb,
                      inner)
    out += _t5_mlp(layer, target_length, emb, mlp)
  head = "token_embedder/embedding" if c.logits_via_embedding else "decoder/logits_dense/kernel"
  out.append(Matmul(head, "head", target_length, emb, c.vocab_size))
  return tuple(out)


def matmuls_from_config(config, class_token: bool = False, input_length: int | None = None,
                        target_length: int | None = None) -> tuple[Matmul, ...]:
  """The matmuls of the model a pgf config (configs/*.py) trains, per example: its family's
  `matmuls` (pgf/families/)."""
  from pgf import families  # pylint: disable=g-import-not-at-top
  return tuple(families.of_config(config).matmuls(
      config, class_token=class_token, input_length=input_length, target_length=target_length))


# ----------------------------------------------------------------------------- densities
def as_recipe(rules) -> Recipe:
  """A Recipe from a Recipe, ((regex, "N:M"), ...) rules, or None (dense).

  For inference only the rules' targets matter, so bare rules become a "dense" recipe (which
  validates them without phase constraints).
  """
  if isinstance(rules, Recipe):
    return rules
  return Recipe(method="dense", rules=tuple(rules or ()))


def _rule_of_matmuls(matmuls: Sequence[Matmul], recipe: Recipe) -> list[int | None]:
  """Rule index per matmul (None: dense), after checking each rule fits its kernels."""
  index = [recipe.rule_for(mm.name) if mm.kernel else None for mm in matmuls]
  problems = []
  for i, rule in enumerate(recipe.rules):
    matched = [mm for mm, r in zip(matmuls, index) if r == i]
    if not matched:
      example = next((mm.name for mm in matmuls if mm.kernel), "")
      problems.append(f"rules[{i}] pattern {rule.pattern!r} matches no kernel of this model "
                      f"(names look like {example!r})")
    for mm in matched:
      length = mm.k
      if mm.shape and rule.axis is not None:  # e.g. a conv grouped along its input channels
        length = int(np.prod([mm.shape[a] for a in normalize_axes(mm.shape, rule.axis)]))
      for n, m in recipe.stages(rule):
        if length % m:
          problems.append(f"{mm.name}: rules[{i}] '{n}:{m}' needs the grouped length "
                          f"{length} to be divisible by {m}")
  if problems:
    raise ValueError("rules do not fit this model:\n  - " + "\n  - ".join(problems))
  return index


def _check_groups(groups: Iterable[str]) -> tuple[str, ...]:
  groups = tuple(groups)
  unknown = set(groups) - set(ALL_GROUPS)
  if unknown:
    raise ValueError(f"groups={groups!r}: unknown {sorted(unknown)}; choose from {ALL_GROUPS}")
  return groups


def inference_flops(matmuls: Sequence[Matmul], rules=None,
                    groups: Iterable[str] = COUNTED_GROUPS) -> dict[str, float]:
  """Forward FLOPs per example with every rule at its target N:M.

  Args:
    matmuls: from `vit_matmuls`, `t5_matmuls` or `matmuls_from_config`.
    rules: a `pgf.Recipe`, ((regex, "N:M"), ...) pairs, or None for dense.
    groups: which groups the "total" adds up (all groups are reported).

  Returns:
    {"attention", "mlp", "embedding", "head": FLOPs of each group, "total": FLOPs of `groups`}.
  """
  groups = _check_groups(groups)
  recipe = as_recipe(rules)
  index = _rule_of_matmuls(matmuls, recipe)
  out = {g: 0.0 for g in ALL_GROUPS}
  for mm, r in zip(matmuls, index):
    density = 1.0 if r is None else recipe.rules[r].n / recipe.rules[r].m
    out[mm.group] += mm.flops * density
  out["total"] = sum(out[g] for g in groups)
  return out


def training_flops_per_step(matmuls: Sequence[Matmul], recipe: Recipe, batch_size: int = 1,
                            groups: Iterable[str] = COUNTED_GROUPS,
                            dense_weight_gradient: bool = False) -> np.ndarray:
  """FLOPs of each training step (forward + backward, `batch_size` examples), shape (total,)."""
  groups = _check_groups(groups)
  if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
    raise ValueError(f"batch_size={batch_size!r}: must be a positive int")
  index = _rule_of_matmuls(matmuls, recipe)
  schedule = schedule_arrays(recipe)
  counted = [(mm, r) for mm, r in zip(matmuls, index) if mm.group in groups]
  dense = float(sum(mm.flops for mm, _ in counted))
  forward = np.full(schedule["steps"].shape, sum(mm.flops for mm, r in counted if r is None),
                    np.float64)
  for i, rule in enumerate(schedule["rules"]):
    forward += sum(mm.flops for mm, r in counted if r == i) * rule["compute"]
  # Backward: the input gradient costs one forward; the weight gradient another, at the sparse
  # density (paper) or dense when pruned weights must receive gradients too.
  weight_gradient = dense if dense_weight_gradient else forward
  return batch_size * (2.0 * forward + weight_gradient)


def training_flops(matmuls: Sequence[Matmul], recipe: Recipe, batch_size: int = 1,
                   groups: Iterable[str] = COUNTED_GROUPS,
                   dense_weight_gradient: bool = False) -> dict[str, Any]:
  """Training FLOPs of a whole recipe, per phase and against dense training of equal length.

  Returns:
    {"total": FLOPs, "dense": FLOPs of dense training with the same steps and batch,
     "ratio": total / dense, "phases": {phase name: FLOPs} in training order,
     "cumulative": cumulative[s] = FLOPs of steps 0..s (the x axis of iso-FLOP plots),
     "steps", "batch_size"}.
  """
  per_step = training_flops_per_step(matmuls, recipe, batch_size, groups, dense_weight_gradient)
  dense_recipe = dataclasses.replace(recipe, method="dense", sdgf_stages=None, rules=())
  dense = training_flops_per_step(matmuls, dense_recipe, batch_size, groups)
  steps = np.arange(recipe.total_steps)
  bounds = {"dense": steps < recipe.dense_steps,
            "finetune": steps >= recipe.finetune_start}
  bounds[recipe.phase(recipe.dense_steps) if recipe.decay_steps else "middle"] = (
      ~bounds["dense"] & ~bounds["finetune"])
  if recipe.method == "dense":
    bounds = {"dense": np.ones_like(steps, bool)}
  phases = {}
  for name in ("dense", "decay", "structure", "sparse", "finetune"):
    if name in bounds and bounds[name].any():
      phases[name] = float(per_step[bounds[name]].sum())
  total = float(per_step.sum())
  return {"total": total, "dense": float(dense.sum()), "ratio": total / float(dense.sum()),
          "phases": phases, "cumulative": np.cumsum(per_step), "steps": recipe.total_steps,
          "batch_size": int(batch_size)}


# ----------------------------------------------------------------------------- the table
def _with_patterns(recipe: Recipe, pattern: str) -> Recipe:
  rules = tuple((r.pattern, pattern, r.axis) for r in recipe.rules)
  return Recipe(method="dense", rules=rules)


def _unit(value: float) -> tuple[float, str]:
  """The largest of E/P/T/G/MFLOPs that keeps `value` >= 1 (GFLOPs for ViT-B inference)."""
  for scale, name in ((1e18, "EFLOPs"), (1e15, "PFLOPs"), (1e12, "TFLOPs"), (1e9, "GFLOPs")):
    if value >= scale:
      return scale, name
  return 1e6, "MFLOPs"


def inference_table(matmuls, recipe: Recipe, groups=COUNTED_GROUPS, per: str = "example",
                    divisor: float = 1.0) -> str:
  """Markdown table: dense, each of PAPER_PATTERNS on every rule, and the config's targets."""
  rows = [("dense", inference_flops(matmuls, None, groups))]
  configured = tuple(r.nm for r in recipe.rules)
  for pattern in PAPER_PATTERNS if configured else ():  # a rule-less config has only dense
    try:
      flops = inference_flops(matmuls, _with_patterns(recipe, pattern), groups)
    except ValueError:
      continue  # M does not divide some kernel
    label = pattern + (" (config)" if configured == (pattern,) * len(configured) else "")
    rows.append((label, flops))
  if configured and (len(set(configured)) > 1 or configured[0] not in PAPER_PATTERNS):
    rows.append((", ".join(configured) + " (config)", inference_flops(matmuls, recipe, groups)))
  dense_total = rows[0][1]["total"]
  scale, unit = _unit(dense_total / divisor)
  scale *= divisor
  # attention and mlp (transformers), conv (CNNs): the counted groups this model has.
  columns = tuple(g for g in ("attention", "mlp", "conv") if rows[0][1][g]) or ("attention", "mlp")
  lines = [f"| rules at | {' | '.join(columns)} | total {unit} per {per} | vs dense |",
           "|---|---|" + "---|" * len(columns) + "---|"]
  for label, f in rows:
    lines.append(f"| {label} | " + " | ".join(f"{f[c] / scale:.4f}" for c in columns)
                 + f" | {f['total'] / scale:.4f} | {f['total'] / dense_total:.3f}x |")
  return "\n".join(lines)


def training_table(matmuls, recipe: Recipe, batch_size: int, groups=COUNTED_GROUPS,
                   methods: Sequence[str] | None = None) -> str:
  """Markdown table of training FLOPs per method with the recipe's rules and phases."""
  from pgf.recipes import MDGF_DECAYS, SDGF_SCHEDULES  # pylint: disable=g-import-not-at-top
  if not recipe.rules:
    methods = ("dense",)  # no rule: every other method is invalid
  methods = methods or tuple(dict.fromkeys(
      (recipe.method, "dense", "ste", "sr_ste") + MDGF_DECAYS
      + tuple(s for s in SDGF_SCHEDULES if s != "sdgf_custom") + ("mdgf_exp+sdgf_geometric",)))
  dense = dataclasses.replace(recipe, method="dense", rules=(), sdgf_stages=None)
  scale, unit = _unit(training_flops(matmuls, dense, batch_size, groups)["total"])
  lines = [f"| method | dense phase | middle phase | fine-tune | total {unit} | vs dense |",
           "|---|---|---|---|---|---|"]
  for method in methods:
    try:
      variant = dataclasses.replace(recipe, method=method, sdgf_stages=(
          recipe.sdgf_stages if method.endswith("sdgf_custom") else None))
      result = training_flops(matmuls, variant, batch_size, groups)
    except ValueError as e:
      lines.append(f"| {method} | n/a: {str(e).splitlines()[-1].strip(' -')} | | | | |")
      continue
    phases = result["phases"]
    middle = sum(v for k, v in phases.items() if k in ("decay", "structure", "sparse"))
    cells = [phases.get("dense", 0.0), middle, phases.get("finetune", 0.0), result["total"]]
    lines.append(f"| {method} | " + " | ".join(f"{c / scale:.4g}" for c in cells)
                 + f" | {result['ratio']:.3f}x |")
  return "\n".join(lines)


def describe(config, steps: int | None = None, class_token: bool = False,
             groups: Sequence[str] = COUNTED_GROUPS, input_length: int | None = None,
             target_length: int | None = None) -> str:
  """The text `python -m pgf.analysis.flops` prints for a config."""
  from pgf.analysis.runs import total_steps_from_config  # pylint: disable=g-import-not-at-top
  from pgf.train.config_lib import build_recipe  # pylint: disable=g-import-not-at-top
  matmuls = matmuls_from_config(config, class_token, input_length, target_length)
  total_steps = total_steps_from_config(config, steps)
  recipe = build_recipe(config, total_steps)
  from pgf import families  # pylint: disable=g-import-not-at-top
  convention = (f"matmul = 2 MAC, GFLOPs = 1e9 FLOPs, N:M kernels scaled by N/M, counted: "
                f"{', '.join(groups)}")
  header, units = families.of_config(config).flops_header(config, matmuls,
                                                          class_token=class_token)
  inference = "\n\n".join(inference_table(matmuls, recipe, groups, unit, divisor=divisor)
                           for unit, divisor in units)
  training = training_table(matmuls, recipe, config.batch_size, groups)
  return "\n".join([
      header, convention, "", "Inference (rules at their target N:M):", inference, "",
      f"Training: {total_steps} steps x batch {config.batch_size}, forward + backward "
      f"(backward = 2x forward); dense phase {recipe.dense_fraction:g}, fine-tune "
      f"{recipe.finetune_fraction:g}; a step with D(j) > 0 computes densely:", training])


def main(argv):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # orbax / XLA chatter would bury the output
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  groups = tuple(g for g in f.groups.split(",") if g)
  print(describe(f.config, f.steps or None, f.class_token, groups, f.input_length or None,
                 f.target_length or None))


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).")
  flags.DEFINE_integer("steps", 0, "Training steps (default: from the config).")
  flags.DEFINE_bool("class_token", False, "Count the ViT class token as a token.")
  flags.DEFINE_string("groups", ",".join(COUNTED_GROUPS),
                      f"Groups the totals add up, from {ALL_GROUPS}.")
  flags.DEFINE_integer("input_length", 0, "T5 encoder tokens (default: config.data).")
  flags.DEFINE_integer("target_length", 0, "T5 decoder tokens (default: config.data).")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
