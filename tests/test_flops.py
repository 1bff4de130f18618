"""FLOPs accounting: the paper's Appendix D table, model layouts, and training FLOPs of recipes."""

import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import pgf
from pgf.analysis import flops
from pgf.families.t5 import T5_DEMO_SIZES
from pgf.families.vit import VIT_FF
from pgf.models import t5 as t5_lib
from pgf.models import vit as vit_lib
from pgf.sparsify import leaf_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The paper's Appendix D: ViT-B/16 at 224 (196 tokens), GFLOPs with FF at each pattern.
APPENDIX_D = {None: 34.71, "2:4": 23.61, "1:4": 18.06, "1:8": 15.29, "1:16": 13.90,
              "1:32": 13.20, "1:128": 12.69}
VIT_B16 = flops.vit_matmuls("B/16", image_size=224)


def gflops(pattern, matmuls=VIT_B16):
  rules = None if pattern is None else ((VIT_FF, pattern),)
  return {k: v / flops.GFLOP for k, v in flops.inference_flops(matmuls, rules).items()}


@pytest.mark.parametrize("pattern", list(APPENDIX_D))
def test_appendix_d(pattern):
  result = gflops(pattern)
  paper = APPENDIX_D[pattern]
  assert round(result["attention"], 2) == 12.51  # self-attention, the same in every row
  assert abs(result["total"] - paper) < 0.01
  if pattern == "1:32":
    # 13.2079: the paper truncated this entry (see test_no_affine_count_rounds_to_the_table).
    assert math.floor(result["total"] * 100) / 100 == paper
  else:
    assert f"{result['total']:.2f}" == f"{paper:.2f}"


def test_appendix_d_exact_values():
  assert gflops(None)["attention"] == pytest.approx(12.514295808, abs=1e-9)
  assert gflops(None)["mlp"] == pytest.approx(22.196256768, abs=1e-9)
  assert gflops("1:32")["total"] == pytest.approx(13.207928832, abs=1e-9)


def test_no_affine_count_rounds_to_the_table():
  """Why 1:32 is matched by truncation: no a + b·N/M rounds to 15.29, 13.20 and 12.69."""
  # 1:8 and 1:32 force b > 22.1867; 1:32 and 1:128 force b < 22.1867.
  lower_b = (15.285 - 13.205) / (1 / 8 - 1 / 32)
  upper_b = (13.205 - 12.685) / (1 / 32 - 1 / 128)
  assert lower_b >= upper_b - 1e-9


def test_other_conventions_do_not_reproduce_the_paper():
  with_class_token = flops.vit_matmuls("B/16", 224, class_token=True)
  assert round(gflops(None, with_class_token)["attention"], 2) == 12.59
  assert round(flops.inference_flops(VIT_B16)["total"] / 2**30, 2) != 34.71


def test_embedding_and_head_are_reported_not_counted():
  result = gflops(None)
  assert result["embedding"] == pytest.approx(2 * 196 * 768 * 768 / 1e9)
  assert result["head"] == pytest.approx(2 * 768 * 1000 / 1e9)
  everything = flops.inference_flops(VIT_B16, groups=flops.ALL_GROUPS)["total"] / 1e9
  assert everything == pytest.approx(result["total"] + result["embedding"] + result["head"])


def _kernel_shapes(params):
  return {leaf_path(kp): leaf.shape for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
          if leaf_path(kp).endswith("kernel")}


def test_vit_matmuls_name_real_kernels():
  dims = dict(vit_lib.decode_variant("Ti/4"), depth=2)
  model = vit_lib.ViT(num_classes=10, **dims)
  params = jax.eval_shape(lambda rng: model.init(rng, np.zeros((1, 16, 16, 3)), False),
                          jax.random.key(0))
  shapes = _kernel_shapes(params["params"])
  kernels = {mm.name: mm for mm in flops.vit_matmuls(dims, 16, num_classes=10) if mm.kernel}
  assert set(kernels) == set(shapes)
  for name, mm in kernels.items():
    assert mm.k * mm.cols == math.prod(shapes[name]), name


def test_t5_matmuls_name_real_kernels():
  config = t5_lib.get_config("tiny", vocab_size=64)
  model = t5_lib.T5(config)
  tokens = np.ones((1, 8), np.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens, tokens)["params"]
  shapes = _kernel_shapes(params)
  kernels = {mm.name: mm for mm in flops.t5_matmuls(config, 8, 4) if mm.kernel}
  assert set(kernels) == set(shapes)  # the token embedding is a lookup, not a matmul
  for name, mm in kernels.items():
    assert mm.k * mm.cols == math.prod(shapes[name]), name


def test_t5_counts_by_hand():
  config = t5_lib.get_config("tiny", vocab_size=64)  # emb 64, inner 64, mlp 128, 2 + 2 layers
  enc, dec = 8, 4
  result = flops.inference_flops(flops.t5_matmuls(config, enc, dec), groups=flops.ALL_GROUPS)
  encoder_attention = 4 * enc * 64 * 64 + 2 * enc * enc * 64
  decoder_attention = (4 * dec * 64 * 64 + 2 * dec * dec * 64  # self
                       + 2 * dec * 64 * 64 + 2 * enc * 64 * 64 + 2 * dec * enc * 64)  # cross
  assert result["attention"] == 2 * 2 * (encoder_attention + decoder_attention)
  assert result["mlp"] == 2 * 2 * 3 * (enc + dec) * 64 * 128
  assert result["head"] == 2 * dec * 64 * 64
  ff = flops.inference_flops(flops.t5_matmuls(config, enc, dec),
                             ((r".*/mlp/(wi_0|wi_1|wo)/kernel", "1:4"),))
  assert ff["mlp"] == result["mlp"] / 4 and ff["attention"] == result["attention"]


def test_rules_that_do_not_fit_are_errors():
  with pytest.raises(ValueError, match="matches no kernel"):
    flops.inference_flops(VIT_B16, ((r".*/mlp/fc3/kernel", "1:4"),))
  with pytest.raises(ValueError, match="divisible by 1024"):
    flops.inference_flops(VIT_B16, ((VIT_FF, "1:1024"),))
  with pytest.raises(ValueError, match="groups"):
    flops.inference_flops(VIT_B16, groups=("mlp", "softmax"))


# ----------------------------------------------------------------------------- training
SMALL = flops.vit_matmuls(dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4), 16)
FF_DENSE = sum(mm.flops for mm in SMALL if mm.group == "mlp")
OTHER = sum(mm.flops for mm in SMALL if mm.group == "attention")


def recipe(method, pattern="1:16", total=100, **kw):
  return pgf.Recipe(method=method, rules=((VIT_FF, pattern),), total_steps=total, **kw)


def test_dense_training_is_three_forwards_per_example():
  result = flops.training_flops(SMALL, recipe("dense"), batch_size=8)
  assert result["total"] == 100 * 8 * 3 * (OTHER + FF_DENSE)
  assert result["ratio"] == 1.0 and result["phases"] == {"dense": result["total"]}


def test_ste_is_dense_then_sparse():
  r = recipe("sr_ste")  # 5 dense steps, then the target 1:16 with a hard mask
  result = flops.training_flops(SMALL, r, batch_size=2)
  sparse = OTHER + FF_DENSE / 16
  assert result["phases"]["dense"] == 2 * 3 * 5 * (OTHER + FF_DENSE)
  assert result["phases"]["sparse"] == pytest.approx(2 * 3 * 85 * sparse)
  assert result["phases"]["finetune"] == pytest.approx(2 * 3 * 10 * sparse)
  assert result["total"] == pytest.approx(sum(result["phases"].values()))
  assert result["cumulative"][-1] == pytest.approx(result["total"])
  assert np.all(np.diff(result["cumulative"]) > 0)


def test_mdgf_computes_densely_while_d_is_positive():
  exp = flops.training_flops(SMALL, recipe("mdgf_exp"))
  assert exp["phases"]["decay"] == 3 * 85 * (OTHER + FF_DENSE)  # exp(-bt) > 0 throughout
  linear = recipe("mdgf_linear")  # D reaches 0 at 70% of training
  positive = sum(float(linear.decay(s)) > 0 for s in range(linear.dense_steps,
                                                           linear.finetune_start))
  expected = 3 * (positive * (OTHER + FF_DENSE) + (85 - positive) * (OTHER + FF_DENSE / 16))
  result = flops.training_flops(SMALL, linear)
  assert 0 < positive < 85 and result["phases"]["decay"] == pytest.approx(expected)
  ste = flops.training_flops(SMALL, recipe("ste"))["total"]
  assert ste < result["total"] < exp["total"] < flops.training_flops(SMALL, recipe("dense"))[
      "total"]


def test_sdgf_stages_at_their_densities():
  r = recipe("sdgf_stepwise", total=1000)  # 15:16, 8:16, 4:16, 2:16, 1:16 over 850 steps
  result = flops.training_flops(SMALL, r)
  expected = 3 * sum(170 * (OTHER + FF_DENSE * n / 16) for n in (15, 8, 4, 2, 1))
  assert result["phases"]["structure"] == pytest.approx(expected)
  geometric = flops.training_flops(SMALL, recipe("sdgf_geometric", "1:4", 1000, sdgf_k=4))
  assert geometric["phases"]["structure"] == pytest.approx(3 * 850 * (OTHER + FF_DENSE / 4))


def test_dense_weight_gradient_charges_the_weight_gradient_densely():
  r = recipe("ste")
  paper = flops.training_flops_per_step(SMALL, r)
  dense_wg = flops.training_flops_per_step(SMALL, r, dense_weight_gradient=True)
  forward = paper / 3
  np.testing.assert_allclose(dense_wg, 2 * forward + OTHER + FF_DENSE)


def test_cli_prints_the_table():
  out = subprocess.run(
      [sys.executable, "-m", "pgf.analysis.flops", "--config=configs/vit_1_16.py:method=sr_ste"],
      cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"),
      check=True).stdout
  assert "| 1:16 (config) | 12.5143 | 1.3873 | 13.9016 |" in out
  assert "109475 steps x batch 4096" in out and "| sr_ste |" in out


def test_t5_configs_per_sequence_and_token():
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(os.path.join(ROOT, "configs", "t5_1_4.py:demo"))
  matmuls = flops.matmuls_from_config(config)
  # The longest genre label plus EOS is 8 bytes; the byte vocabulary rounds up to 384.
  tiny = t5_lib.get_config("tiny", 384, **T5_DEMO_SIZES)
  assert matmuls == flops.t5_matmuls(tiny, 192, 8)
  text = flops.describe(config)
  assert "192 input + 8 target tokens" in text and "per sequence" in text and "per token" in text
  assert "| 1:4 (config) |" in text and "| sdgf_stepwise |" in text
  # Span corruption: T5's 512 -> 114 targets; GLUE: label lengths without opening any data.
  assert "512 input + 114 target" in flops.describe(
      config_lib.load(os.path.join(ROOT, "configs", "t5_pretrain.py")))
  glue = flops.matmuls_from_config(config_lib.load(os.path.join(ROOT, "configs", "t5_1_32.py")))
  assert {mm.rows for mm in glue if "self_attention/query" in mm.name} == {15}
  config.data.input_length = 0
  with pytest.raises(ValueError, match="config.data.input_length"):
    flops.matmuls_from_config(config)
