#!/usr/bin/env bash
# ADMM vs one-shot magnitude pruning on LeNet-5 / digits 28x28 (the ADMM paper's per-layer setting),
# with the same number of training steps after the dense model (30 x 100 ADMM + 1,000 retraining
# = 4,000 masked fine-tuning steps for one-shot), for 3 seeds; then the tables in results/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=logs/admm_lenet5
python run.py -m experiment=admm_lenet5 seed=0,1,2 hydra.sweep.dir=$out/admm
python run.py -m experiment=admm_lenet5 finetune=adamw recipe.finetune_steps=4000 seed=0,1,2 \
    hydra.sweep.dir=$out/oneshot
python -m rdprune.report $out --out results/admm_lenet5
