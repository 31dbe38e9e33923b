#!/usr/bin/env bash
# The learning protocol in one command (docs/training.md, "Tuning and held-out worlds"):
#  1. on the tuning worlds, train the default learner, BCQ and their variants and choose, per
#     family, the variant with the best mean true return vs logging (the fair BCQ, with the
#     VAE or UnifiedRL's policy-bounded candidates; the default learner's critic and action
#     parametrisation: diagonal or with weight interactions, box or one action per ray);
#  2. on the held-out worlds, report the default learner, BCQ and the chosen variants against
#     the logging policy and the best fixed weights (CEM), and let the OPE gate choose among
#     the learners on fresh users' logs (its regret against the truth-best) -- nothing is
#     chosen there with the truth.
# Usage: bash benchmarks/heldout_protocol.sh OUT_DIR [extra heldout_learning.py args]
# PY (default .venv/bin/python) runs it; both result JSONs and logs land in OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: heldout_protocol.sh OUT_DIR [args]}; shift
PY=${PY:-.venv/bin/python}
WORK=${WORK:-/tmp/mtf-heldout-protocol}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
learners=(--learner "iql_full: train.iql.curvature=full"
          --learner "ray: fusion.action_space=ray"
          --learner "ray_full: fusion.action_space=ray train.iql.curvature=full"
          --learner "bcq_bounded: train.algo=bcq train.bcq.candidates=bounded"
          --learner "bcq_bounded_lam075: train.algo=bcq train.bcq.candidates=bounded \
train.bcq.lam=0.75"
          --learner "bcq_bounded_w03: train.algo=bcq train.bcq.candidates=bounded \
train.bcq.bound=0.3"
          --learner "bcq_rho05: train.algo=bcq train.bcq.rho=0.5"
          --learner "bcq_lam075: train.algo=bcq train.bcq.lam=0.75"
          --learner "bcq_wide: train.algo=bcq train.common.hidden=[256,256] \
train.bcq.vae_hidden=[256,256] train.max_steps=15000 train.bcq.lam=0.75")
families=(--family "bcq: bcq,bcq_rho05,bcq_lam075,bcq_wide,bcq_bounded,bcq_bounded_lam075,\
bcq_bounded_w03" --family "default: default,iql_full,ray,ray_full")
"$PY" benchmarks/heldout_learning.py --role tuning --choose "${learners[@]}" "${families[@]}" \
    --workdir "$WORK" --json "$OUT/heldout_learning_tuning.json" "$@" 2>&1 | tee "$OUT/tuning.log"
[ -s "$OUT/heldout_learning_tuning.json" ] || { echo "tuning run failed: nothing chosen"; exit 3; }
"$PY" benchmarks/heldout_learning.py --role heldout --ope-select \
    --learners-from "$OUT/heldout_learning_tuning.json" --workdir "$WORK" \
    --json "$OUT/heldout_learning_heldout.json" "$@" 2>&1 | tee "$OUT/heldout.log"
