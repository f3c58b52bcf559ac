#!/usr/bin/env bash
# Training recipes: `bash run_train.sh RECIPE [extra Hydra overrides]`.
# CPU recipes train from scratch in minutes; the paper recipes fine-tune the released weights
# on GPUs (launch them with `torchrun --nproc_per_node N finetune.py ...` for several GPUs).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
recipe=${1:-cpu-default}
shift || true

# `--help`: every recipe of the case list below, with its comment
recipes() {
  echo "usage: bash run_train.sh RECIPE [Hydra overrides, e.g. training.n_iters=500]"; echo "recipes:"
  awk -f scripts/list_recipes.awk "$(basename "$0")"  # the script is in the cwd (cd above)
}

case "$recipe" in
  -h|--help|help) recipes; exit 0 ;;
  # --- CPU, from scratch (see README "Results") -------------------------------------------
  cpu-default)    $PY finetune.py "$@" ;;                               # the built-in default
  cpu-default-mp) $PY finetune.py data.multipass=True "$@" ;;        # the default, DoT-MP
  cpu-4x4)        $PY finetune.py experiment=cpu_4x4 "$@" ;;             # block diffusion
  cpu-4x4-mp)     $PY finetune.py experiment=cpu_4x4 data.multipass=True "$@" ;;  # + DoT-MP
  cpu-4x4-sp)     $PY finetune.py experiment=cpu_4x4 backbone=sedd \
                    backbone.time_conditioning=false backbone.objective=cross_entropy \
                    backbone.loss_weighting=flat "$@" ;;  # plain single pass, best settings found
  cpu-4x4-ar)     $PY finetune.py experiment=cpu_4x4 backbone=ar "$@" ;; # AR baseline
  cpu-4x4-fast)   $PY finetune.py experiment=cpu_4x4_fast "$@" ;;        # few parallel calls
  cpu-gsm8k-toy)  $PY finetune.py data.task=gsm8k_toy "$@" ;;  # GSM8K format offline (generated problems)
  # --- Plaid-1B, DoT paper (HKUNLP/diffusion-of-thoughts run_train.sh), 8 GPUs x 16 --------
  plaid-gsm8k)    $PY finetune.py backbone=plaid model=plaid1b init=${PLAID_WEIGHTS:-plaid1b_weights} \
                    data.task=gsm8k data.tokenizer=owt2 data.digit=True training.block_size=256 \
                    training.batch_size=128 training.n_iters=120000 training.max_minutes=null "$@" ;;  # Plaid-1B on GSM8K-Aug
  plaid-gsm8k-ss) bash "$0" plaid-gsm8k backbone.min_prob=0.95 "$@" ;;    # scheduled sampling
  plaid-gsm8k-mp) bash "$0" plaid-gsm8k data.multipass=True training.n_iters=31000 "$@" ;;  # DoT-MP
  # Official glance: p=0.1 for the first 2 rows of each 16-row batch = 0.0125 per row.
  plaid-gsm8k-mp-glance) bash "$0" plaid-gsm8k-mp data.glance=0.0125 "$@" ;;  # DoT-MP, glance
  # --- SEDD, DoT paper (dot-sedd branch), 4 GPUs x 64 ------------------------------------
  sedd-gsm8k)     $PY finetune.py backbone=sedd model=small init=louaaron/sedd-small \
                    data.task=gsm8k data.tokenizer=gpt2 training.block_size=128 \
                    training.batch_size=256 training.n_iters=120000 training.eval_freq=100 \
                    training.snapshot_freq=60000 training.snapshot_freq_for_preemption=10000 \
                    optim.lr=3e-4 optim.warmup=2500 optim.decay=none training.ema=0.9999 \
                    training.max_minutes=null sampling.predictor=analytic "$@" ;;  # sedd-small on GSM8K-Aug
  sedd-gsm8k-mp)  bash "$0" sedd-gsm8k data.multipass=True "$@" ;;  # DoT-MP
  sedd-medium-gsm8k) bash "$0" sedd-gsm8k model=medium init=louaaron/sedd-medium "$@" ;;  # sedd-medium
  *) echo "unknown recipe '$recipe'" >&2; recipes >&2; exit 2 ;;
esac
