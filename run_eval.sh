#!/usr/bin/env bash
# Evaluation recipes: `bash run_eval.sh [RECIPE] [RUN_OR_WEIGHTS] [extra evaluation_batch.py flags]`.
# With no arguments: the most recent run folder, decoded at T = 1 2 4 8 16 32 64, then scored.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
recipe=${1:-sweep}
run=${2:-}
shift $(( $# > 2 ? 2 : $# )) || true
W=()
[ -n "$run" ] && W=(--weights_path "$run")
EVAL="$PY evaluation_batch.py"

# `--help`: every recipe of the case list below, with its comment
recipes() {
  echo "usage: bash run_eval.sh [RECIPE] [RUN_OR_WEIGHTS] [evaluation_batch.py flags]"; echo "recipes:"
  awk -f scripts/list_recipes.awk "$(basename "$0")"  # the script is in the cwd (cd above)
}

case "$recipe" in
  -h|--help|help) recipes; exit 0 ;;
  sweep)   # any backbone: accuracy against the number of denoising steps
    for T in 1 2 4 8 16 32 64; do $EVAL "${W[@]}" --sampling_timesteps "$T" --no_progress "$@"; done
    if [ -n "$run" ] && [ -d "$run/eval" ]; then $PY cal_acc_gsm.py "$run"/eval/test-T*.jsonl
    else $PY cal_acc_gsm.py; fi ;;  # no run given: every file of the newest eval folder
  sc)      # self-consistency over 5 seeded runs
    $EVAL "${W[@]}" --runs 5 --apply_sc "$@" ;;
  # --- Plaid, DoT paper (run_eval.sh) -----------------------------------------------------
  plaid-dot)        $EVAL "${W[@]}" --dataset gsm8k --fix_src --digit --score_temp 0.5 --sampling_timesteps 64 "$@" ;;  # score temp 0.5, T=64
  plaid-dot-t8)     $EVAL "${W[@]}" --dataset gsm8k --fix_src --digit --score_temp 0.5 --sampling_timesteps 8 "$@" ;;  # score temp 0.5, T=8
  plaid-dot-dpm)    $EVAL "${W[@]}" --dataset gsm8k --fix_src --digit --dpm_solver --sampling_timesteps 8 "$@" ;;  # DPM-Solver++, T=8
  plaid-dot-sc)     $EVAL "${W[@]}" --dataset gsm8k --fix_src --digit --score_temp 0.8 --runs 20 --apply_sc \
                      --logit_sample --logit_temp 0.5 --sampling_timesteps 64 "$@" ;;  # SC over 20 runs
  plaid-mp)         $EVAL "${W[@]}" --dataset gsm8k --fix_src --digit --cot --score_temp 0.5 --sampling_timesteps 64 "$@" ;;  # DoT-MP, T=64
  plaid-mp-dpm)     $EVAL "${W[@]}" --dataset gsm8k --fix_src --digit --cot --dpm_solver --sampling_timesteps 4 "$@" ;;  # DoT-MP, DPM-Solver++, T=4
  # --- SEDD, DoT paper (dot-sedd branch): steps sweep, then the scorer -------------------
  sedd-dot|sedd-mp)  # analytic sampler, T = 4..64 (sedd-mp: DoT-MP)
    extra=(--batch_size 128); [ "$recipe" = sedd-mp ] && extra=(--cot --batch_size 16)
    for T in 4 8 16 32 64; do
      $EVAL "${W[@]}" --dataset gsm8k --predictor analytic --sampling_timesteps "$T" "${extra[@]}" "$@"
    done ;;
  *) echo "unknown recipe '$recipe'" >&2; recipes >&2; exit 2 ;;
esac
