"""experiments/bench_accelerator.py --smoke: every sub-benchmark runs, the table and JSON hold
what docs/benchmarks.md's "Speed on accelerators" describes, and every ratio is a positive finite number.
One subprocess (the smoke run) serves every test here; experiments/device_check.sh is checked
for syntax."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "bench_accelerator.py")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench") / "smoke.json"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  run = subprocess.run([sys.executable, SCRIPT, "--smoke", f"--out={out}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  with open(out) as f:
    return json.load(f), run.stdout, str(out)


def positive_finite(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_json_has_every_section_and_the_environment(smoke):
  results, _, _ = smoke
  env = results["environment"]
  for key in ("date", "device_kind", "platform", "jax", "jaxlib", "flax", "host_cores"):
    assert env[key], key
  assert env["smoke"] is True and env["peak_bf16_flops"] is None  # a CPU has no bf16 peak
  for name in ("masks", "step", "t5", "input", "peer", "decode"):
    assert name in results and "error" not in results[name], (name, results.get(name))


def test_mask_ratios(smoke):
  rows = smoke[0]["masks"]["rows"]
  assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}
  for r in rows:
    for key in ("nm_mask_ms", "double_argsort_ms", "elementwise_ms", "argsort_over_nm_mask",
                "nm_mask_over_elementwise"):
      assert positive_finite(r[key]), (key, r)


@pytest.mark.parametrize("kind", ["step", "t5"])
def test_step_rows(smoke, kind):
  section = smoke[0][kind]
  rows = {r["method"]: r for r in section["rows"]}
  assert "dense" in rows and len(rows) >= 2
  assert rows["dense"]["ratio_to_dense"] == 1.0
  assert positive_finite(section["flops_per_step"])
  for r in rows.values():
    for key in ("step_ms", "images_per_s", "ratio_to_dense", "ratio_min", "ratio_max",
                "of_matmul_ceiling"):
      assert positive_finite(r[key]), (key, r)
    assert r["mfu"] is None  # no datasheet peak on a CPU: "n/a" in the table
    assert r["calls"] >= 3


def test_decode_rows(smoke):
  rows = smoke[0]["decode"]["rows"]
  assert {(r["batch"], r["contender"]) for r in rows} == {
      (b, c) for b in (1, 8) for c in ("dense", "gather", "expand")}
  for r in rows:
    assert positive_finite(r["tokens_per_s"]) and positive_finite(r["vs_dense"])
    assert r["nm_kernel_bytes_compressed"] < r["nm_kernel_bytes_dense"]
  assert all(r["vs_dense"] == 1.0 for r in rows if r["contender"] == "dense")


def test_input_and_peer_rows_skip_or_measure(smoke):
  results = smoke[0]
  if "skipped" not in results["input"]:
    assert positive_finite(results["input"]["images_per_s"])
  try:
    import timm  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    assert "skipped" in results["peer"]
  else:
    assert positive_finite(results["peer"]["pgf_over_peer"])


def test_table_and_merge(smoke, tmp_path):
  results, stdout, path = smoke
  assert "SMOKE RUN" in stdout
  for header in ("## masks", "## step", "## t5", "## input", "## peer", "## decode",
                 "| FF pattern | batch | contender |", "| method | step ms |",
                 "| shape | dtype | N:M |"):
    assert header in stdout, header
  # --merge of per-sub-benchmark files (as device_check.sh runs them) renders the same table.
  parts = []
  for name in ("masks", "step", "t5"):
    part = tmp_path / f"{name}.json"
    part.write_text(json.dumps({"environment": results["environment"], name: results[name]}))
    parts.append(str(part))
  merged_path = tmp_path / "merged.json"
  run = subprocess.run([sys.executable, SCRIPT, "--merge", *parts, f"--out={merged_path}"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
  merged = json.loads(merged_path.read_text())
  assert set(merged) == {"environment", "masks", "step", "t5"}
  assert "## step" in run.stdout and "## input" not in run.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_device_check_script_parses():
  for name in ("device_check.sh", "fetch_wheels.sh"):
    subprocess.run(["bash", "-n", os.path.join(ROOT, "experiments", name)], check=True)
