#!/usr/bin/env bash
# Time the README's set-up as a new user meets it: a fresh virtual environment, no pip cache, the two
# install commands, then the SmolLM2 fetch; check that nothing was compiled (no llama_cpp) and save JSON.
#   bash scripts/time_setup.sh [output.json]     # default docs/setup_time.json; about 4 minutes
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/docs/setup_time.json}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
git clone --quiet "$ROOT" "$WORK/repo"
cd "$WORK/repo"
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_NO_CACHE_DIR=1 LIGHTNING_DSRL_CACHE="$WORK/cache"
stamp() { date +%s.%N; }
# each step's output goes to a log; a failing step prints its log's end and stops the script
quiet() { "$@" >"$WORK/step.log" 2>&1 || { tail -n 30 "$WORK/step.log" >&2; echo "error: \`$*\` failed" >&2; exit 1; }; }
t0=$(stamp); quiet pip install torch==2.13.0
t1=$(stamp); quiet pip install -e ".[dev]"
t2=$(stamp); quiet python -m lightning_dsrl.fetch smollm2
t3=$(stamp)
compiled=$(pip list 2>/dev/null | grep -ciE "^(llama[-_]cpp[-_]python|llm) " || true)
python - "$OUT" "$t0" "$t1" "$t2" "$t3" "$compiled" "$(nproc)" "$(cut -d' ' -f1 /proc/loadavg)" <<'P'
import json, sys
out, t0, t1, t2, t3, compiled, cores, load = sys.argv[1], *map(float, sys.argv[2:6]), int(sys.argv[6]), sys.argv[7], sys.argv[8]
result = {"pip_install_torch_s": round(t1 - t0, 1), "pip_install_package_dev_s": round(t2 - t1, 1),
          "two_commands_s": round(t2 - t0, 1), "fetch_smollm2_s": round(t3 - t2, 1),
          "llama_cpp_or_llm_installed": bool(compiled), "cores": int(cores), "load_average_at_end": float(load)}
json.dump(result, open(out, "w"), indent=1)
print(json.dumps(result))
P
