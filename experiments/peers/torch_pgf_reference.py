r"""A PyTorch reference of the authors' training step for MDGF-Exp, written here from the paper.

Progressive Gradient Flow (MDGF-Exp) as a timm user would write it: every feed-forward kernel
(`blocks.*.mlp.fc1` and `fc2` of timm's `vit_base_patch16_224`) gets a sort-based N:M mask,
recomputed from the current weights at every forward pass, and the forward pass uses the decayed
weights W * (mask + D * (1 - mask)), D(t) = exp(-beta * t) with beta = ln(1000) / t_end (so D
is 1e-3 at 70% of training, as in `pgf.Recipe`). Autograd through that product gives the
paper's decayed gradient (pruned weights receive D times their gradient). Around it: AMP bf16
autocast, uint8 batches normalised on the device, batch-mode mixup (alpha 0.5) with sigmoid
binary cross-entropy (the authors' timm recipe), gradient clipping at 1.0 and AdamW. Nothing here
is imported by the `pgf` package; `experiments/bench_accelerator.py --only=peer` times it against
pgf's own MDGF-Exp step, interleaved, at the same batch size.

  python experiments/peers/torch_pgf_reference.py --batch=256 --steps=20   # needs torch + timm
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DECAY_EPSILON = 1e-3
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
  """0/1 mask of a Linear weight (out, in): the n largest |w| of every m consecutive inputs.

  Groups run along the input features (the contracting axis, as N:M sparse tensor cores need);
  one descending sort per group, as the authors' SR-STE-derived code does.
  """
  out_features, in_features = weight.shape
  groups = weight.detach().abs().reshape(out_features, in_features // m, m)
  keep = torch.argsort(groups, dim=-1, descending=True)[..., :n]
  mask = torch.zeros_like(groups).scatter_(-1, keep, 1.0)
  return mask.reshape(out_features, in_features)


class DecayedNMLinear(nn.Module):
  """A Linear whose forward pass uses W * (mask + D * (1 - mask)), mask recomputed each call."""

  def __init__(self, linear: nn.Linear, n: int, m: int):
    super().__init__()
    self.weight, self.bias = linear.weight, linear.bias
    self.n, self.m = n, m
    self.decay = 1.0  # D(t), set by the training loop each step

  def forward(self, x):
    mask = nm_mask(self.weight, self.n, self.m)
    weight = self.weight * (mask + self.decay * (1.0 - mask))
    return F.linear(x, weight, self.bias)


def mdgf_exp_decay(step: int, total_steps: int, dense_fraction: float = 0.05,
                   decay_end_fraction: float = 0.7) -> float:
  """D(step) of MDGF-Exp: 1 in the dense phase, then exp(-beta t), ~1e-3 at decay_end."""
  dense = round(dense_fraction * total_steps)
  if step < dense:
    return 1.0
  t_end = max(round(decay_end_fraction * total_steps) - dense, 1)
  return math.exp(-math.log(1.0 / DECAY_EPSILON) / t_end * (step - dense))


def sparsify_ff(model: nn.Module, n: int, m: int) -> list[DecayedNMLinear]:
  """Replaces fc1 and fc2 of every transformer block's MLP; returns the new layers."""
  layers = []
  for block in model.blocks:
    for name in ("fc1", "fc2"):
      layer = DecayedNMLinear(getattr(block.mlp, name), n, m)
      setattr(block.mlp, name, layer)
      layers.append(layer)
  return layers


def build(batch: int, image_size: int = 224, n: int = 1, m: int = 16, smoke: bool = False,
          total_steps: int = 10_000, start_fraction: float = 0.4, seed: int = 0):
  """(step, info): `step()` runs one training step and waits for the device.

  `smoke` builds a tiny timm VisionTransformer (for CPU tests) instead of ViT-B/16.
  """
  import timm  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if smoke:
    from timm.models.vision_transformer import VisionTransformer  # pylint: disable=g-import-not-at-top
    model = VisionTransformer(img_size=image_size, patch_size=4, embed_dim=32, depth=2,
                              num_heads=2, mlp_ratio=4.0, num_classes=1000, drop_rate=0.1,
                              drop_path_rate=0.1)
    name = "timm VisionTransformer (tiny, smoke)"
  else:
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000,
                              img_size=image_size, drop_rate=0.1, drop_path_rate=0.1)
    name = "timm vit_base_patch16_224"
  layers = sparsify_ff(model, n, m)
  model = model.to(device).train()
  decay_params = [p for p in model.parameters() if p.ndim > 1]
  other_params = [p for p in model.parameters() if p.ndim <= 1]
  optimizer = torch.optim.AdamW(
      [{"params": decay_params, "weight_decay": 0.01}, {"params": other_params,
                                                         "weight_decay": 0.0}],
      lr=1e-3, betas=(0.9, 0.999), **({"fused": True} if device.type == "cuda" else {}))
  rng = np.random.default_rng(seed)
  images = torch.from_numpy(rng.integers(0, 256, (batch, 3, image_size, image_size),
                                         dtype=np.uint8)).to(device)
  labels = torch.from_numpy(rng.integers(0, 1000, (batch,))).to(device)
  mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
  std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
  state = {"step": int(start_fraction * total_steps)}

  def step():
    decay = mdgf_exp_decay(state["step"], total_steps)
    for layer in layers:
      layer.decay = decay
    x = (images.float() - mean) / std
    targets = F.one_hot(labels, 1000).float()
    lam = float(rng.beta(0.5, 0.5))  # batch-mode mixup: one lambda, the batch flipped
    x = lam * x + (1.0 - lam) * x.flip(0)
    targets = lam * targets + (1.0 - lam) * targets.flip(0)
    with torch.autocast(device.type, dtype=torch.bfloat16):
      logits = model(x)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state["step"] += 1
    if device.type == "cuda":
      torch.cuda.synchronize()
    return loss

  info = {"model": name, "batch": batch, "image_size": image_size, "pattern": f"{n}:{m}",
          "sparsified_kernels": len(layers), "torch": torch.__version__,
          "timm": timm.__version__, "device": str(device),
          "device_name": (torch.cuda.get_device_name() if device.type == "cuda" else "cpu")}
  return step, info


def peak_memory_bytes() -> int | None:
  return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--smoke", action="store_true")
  args = parser.parse_args()
  step, info = build(args.batch, args.image_size, smoke=args.smoke)
  for _ in range(3):
    step()
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  print(f"{info['model']} on {info['device_name']}, batch {args.batch}: step "
        f"{1e3 * median:.1f} ms, {args.batch / median:.1f} images/s")


if __name__ == "__main__":
  main()
