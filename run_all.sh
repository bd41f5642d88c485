#!/usr/bin/env bash
# Run the numbered notebooks in order with papermill for one parameter set, or the tests.
#
#   ./run_all.sh                          # params/default.yaml, the embedded default world
#   ./run_all.sh --test                   # the tests (pytest; any further arguments go to pytest)
#   ./run_all.sh params/smoke.yaml        # the same world shrunk to minutes
#   ./run_all.sh params/smoke.yaml --force              # redo every stage
#   ./run_all.sh params/smoke.yaml --from 01_groundtruth
#   ./run_all.sh params/smoke.yaml --only 00_zoo_and_tasks
#
# First, ./setup.sh sets up what is missing (Debian packages of apt.txt, .venv and its pip packages,
# npm packages, Quarto where this machine has an offline installer); silent when all is there.
# Executed notebooks land in runs/<set>/notebooks/, stage outputs in runs/<set>/<stage>/, and a
# successful run ends by writing its HTML report, runs/<set>/report/index.html (ptmrec report), and,
# when quarto is on the PATH, rendering the Quarto report into runs/<set>/report/quarto/_output/.
# Stages whose parameters, code and inputs are unchanged are skipped. The first failing
# notebook stops the run with a non-zero exit naming the notebook and the cell.
set -euo pipefail
cd "$(dirname "$0")"
if [[ "${PTMREC_SETUP:-1}" != 0 ]]; then ./setup.sh; fi
if [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then
  PY=$PWD/.venv/bin/python
  export PATH="$PWD/.venv/bin:$PATH"   # ptmrec, and quarto where setup.sh linked it
else
  PY=python
fi
export QUARTO_PYTHON="${QUARTO_PYTHON:-$(command -v "$PY")}"   # Quarto reads the notebooks with this Python
if [[ "${1:-}" == --test ]]; then
  shift
  exec "$PY" -m pytest "$@"
fi
params=params/default.yaml
if [[ $# -gt 0 && "$1" != --* ]]; then params=$1; shift; fi
exec "$PY" -m ptmrec.cli run "$params" "$@"
