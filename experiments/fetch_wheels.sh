#!/usr/bin/env bash
# Downloads, on a machine with a package index, the wheels that experiments/device_check.sh
# installs on a lent accelerator machine (which reaches no index). Only what the benchmark
# imports and the device image lacks: the image already has jax (CUDA), flax, optax, orbax,
# chex, absl-py, etils, numpy, PyYAML, torch and timm, so a jax or numpy wheel here would only
# shadow them. Python 3.12 / x86-64 by default (the image's, as last seen); override with
# PY_VERSION=3.13 if the device's python3 -V says otherwise.
#
#   bash experiments/fetch_wheels.sh          # -> .wheels/ (git-ignored; `carry` it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION="${PY_VERSION:-3.12}"
DEST="${DEST:-.wheels}"
mkdir -p "$DEST"
# ml-collections: pgf's configs. grain + array-record (+ grain's dm-tree): the input
# sub-benchmark's pipeline (experiments/bench_input.py), skipped there if they are absent;
# portpicker and importlib-resources: grain's and etils[epath]'s needs that the image lacks.
PACKAGES=(ml-collections==1.1.0 array-record==0.8.6 grain dm-tree portpicker importlib-resources)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 any; do
  PLATFORMS+=(--platform "$p")
done
for pkg in "${PACKAGES[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
      --implementation cp "${PLATFORMS[@]}" -d "$DEST" "$pkg"
done
ls -l "$DEST"
du -ch "$DEST"/*.whl | tail -1
