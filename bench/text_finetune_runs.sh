#!/usr/bin/env bash
# Fine-tuning arms of docs/text_diagnosis.md (issue 13): the package classifier; env FRACTION
# (0.1), SEED (42) and STEPS (150: half the recipe's 300, for a contended 2-core machine);
# arms in parallel with one thread each. Each arm is "name override override ...":
#   bench/text_finetune_runs.sh "scratch_last" "gpt_last model.pretrained=outputs/diag/gpt3"
# Writes outputs/diag/ft_<name>/ and ft_<name>.log: its "final metrics" line, then /usr/bin/time's
# wall and user CPU seconds.
set -u
common="experiment=pydoc_package_classifier data.label_fraction=${FRACTION:-0.1} seed=${SEED:-42} logger=none \
trainer.max_steps=${STEPS:-150} trainer.val_check_interval=50"
mkdir -p outputs/diag
for arm in "$@"; do
  set -- $arm
  name=$1; shift
  ( /usr/bin/time -f "%e wall %U user" env OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 10 \
      python -m ptft.train $common "$@" hydra.run.dir=outputs/diag/ft_$name \
      > outputs/diag/ft_$name.log 2>&1; ) &
done
wait
