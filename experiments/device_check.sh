#!/usr/bin/env bash
# The accelerator benchmark, unattended, in ONE call of the device tool (see docs/benchmarks.md, "Speed on
# accelerators"):
#
#   run(command="bash experiments/device_check.sh", carry=[".wheels"], timeout_s=540)
#
# after `bash experiments/fetch_wheels.sh` here. It installs the carried wheels that the image
# lacks (never over its jax, flax or numpy), makes pgf importable, runs each sub-benchmark of
# experiments/bench_accelerator.py in its own process under its own timeout (so one hang does
# not eat the budget), merges their JSONs and writes under $OUT: results.json, table.md, env.txt,
# log.txt. It exits non-zero if any sub-benchmark failed or timed out (the others still run and
# their results still come back). BUDGET_S (default 450) caps the whole run.
#
#   SMOKE=1 bash experiments/device_check.sh   # the same flow on a CPU: --smoke, no installing,
#                                              # no budget; OUT defaults to /tmp/pgf_device_check
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE="${SMOKE:-0}"
OUT="${OUT:-/tmp/pgf_device_check}"
BUDGET_S="${BUDGET_S:-450}"
PY="${PYTHON:-python3}"
PARTS="$(mktemp -d /tmp/pgf_bench_parts.XXXXXX)"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# A compile of one process is a cache hit in the next (the peer's MDGF-Exp step is the step's).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/pgf_jax_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
exec > >(tee -a "$OUT/log.txt") 2>&1

# sub-benchmark and its timeout in seconds, in the order they run (the most wanted first).
SUBS=("masks 45" "step 170" "peer 60" "input 55" "t5 120" "decode 90")
ARGS=()
if [[ "$SMOKE" == 1 ]]; then
  export JAX_PLATFORMS=cpu
  ARGS+=(--smoke)
  BUDGET_S=100000
  SUBS=("masks 300" "step 600" "peer 600" "input 300" "t5 600" "decode 300")
else
  if compgen -G ".wheels/*.whl" > /dev/null; then
    # Only the wheels whose project the image does not have: PYTHONPATH comes before the
    # image's site-packages, so a carried copy of an installed package would shadow it.
    mapfile -t MISSING < <("$PY" - <<'PYEOF'
import glob, importlib.metadata, os
for wheel in sorted(glob.glob(".wheels/*.whl")):
  name = os.path.basename(wheel).split("-")[0]
  try:
    importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    print(wheel)
PYEOF
    )
    if (( ${#MISSING[@]} )); then
      echo "# installing ${MISSING[*]}"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
          --target /tmp/pgf_site "${MISSING[@]}"
      export PYTHONPATH="/tmp/pgf_site${PYTHONPATH:+:$PYTHONPATH}"
    fi
  else
    echo "# no .wheels/ carried: relying on the image's packages"
  fi
  # pgf itself without dependencies or a build environment (nothing can be downloaded there);
  # the benchmark puts the repository on sys.path as well, so a failed install is not fatal.
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-cache-dir -e . \
      || echo "# pip install -e . failed; using the checkout on sys.path"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  date -u +%FT%TZ
  "$PY" -V
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null \
      || echo "no nvidia-smi"
  "$PY" -m pip list 2>/dev/null | grep -iE "^(jax|jaxlib|jax-cuda|flax|optax|orbax|numpy|torch |timm|ml.collections|grain|array.record)" || true
  "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
} > "$OUT/env.txt" 2>&1 || true
cat "$OUT/env.txt"

status=0
for entry in "${SUBS[@]}"; do
  read -r name limit <<< "$entry"
  left=$(( BUDGET_S - SECONDS - 15 ))  # 15 s kept for the merge
  (( limit > left )) && limit=$left
  if (( limit < 20 )); then
    echo "# $name: not run, budget spent"
    printf '{"environment": null, "%s": {"error": "not run: budget of %ss spent"}}\n' \
        "$name" "$BUDGET_S" > "$PARTS/$name.json"
    status=1
    continue
  fi
  echo "# $name: up to ${limit}s"
  rc=0
  timeout -k 10 "$limit" "$PY" experiments/bench_accelerator.py --only="$name" \
      --out="$PARTS/$name.json" "${ARGS[@]}" > "$PARTS/$name.md" || rc=$?
  cat "$PARTS/$name.md"
  if (( rc != 0 )); then
    status=1
    echo "# $name: exit status $rc$( (( rc == 124 || rc == 137 )) && echo " (timed out after ${limit}s)")"
    if [[ ! -s "$PARTS/$name.json" ]] || ! grep -q "\"$name\"" "$PARTS/$name.json"; then
      printf '{"environment": null, "%s": {"error": "exit status %s after %ss (timeout %ss)"}}\n' \
          "$name" "$rc" "$SECONDS" "$limit" > "$PARTS/$name.json"
    fi
  fi
done

rc=0
"$PY" experiments/bench_accelerator.py --merge "$PARTS"/*.json --out="$OUT/results.json" \
    > "$OUT/table.md" || rc=$?
cat "$OUT/table.md"
(( rc != 0 )) && status=1
echo "# device_check: ${SECONDS}s, exit status $status; results in $OUT"
exit "$status"
