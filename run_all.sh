#!/usr/bin/env bash
# Run the numbered notebooks in order with papermill for one parameter set.
#
#   ./run_all.sh                          # params/default.yaml, the embedded default world
#   ./run_all.sh params/smoke.yaml        # the same world shrunk to minutes
#   ./run_all.sh params/smoke.yaml --force              # redo every stage
#   ./run_all.sh params/smoke.yaml --from 01_groundtruth
#   ./run_all.sh params/smoke.yaml --only 00_zoo_and_tasks
#
# Executed notebooks land in runs/<set>/notebooks/, stage outputs in runs/<set>/<stage>/, and a
# successful run ends by writing its HTML report, runs/<set>/report/index.html (ptmrec report).
# Stages whose parameters, code and inputs are unchanged are skipped. The first failing
# notebook stops the run with a non-zero exit naming the notebook and the cell.
set -euo pipefail
cd "$(dirname "$0")"
if [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python
fi
params=params/default.yaml
if [[ $# -gt 0 && "$1" != --* ]]; then params=$1; shift; fi
exec "$PY" -m ptmrec.cli run "$params" "$@"
