#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: Java check, .venv with the locked packages, mtf
# installed in editable mode, Delta Lake jars cached from Maven Central (~/.cache/mtf/jars).
# Re-running is cheap: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v java >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing a Java 17 runtime for Spark"
    apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    echo "setup: Spark needs Java 17 on PATH; install it (e.g. openjdk-17-jre-headless)" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

# Reinstall only when the lock or the package metadata changed.
want=$(cat requirements.lock setup.cfg | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.mtf-lock-sha 2>/dev/null)" != "$want" ]; then
  echo "setup: installing requirements.lock into .venv (first run downloads torch: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade "pip>=24"
  .venv/bin/python -m pip install -q --no-deps -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > .venv/.mtf-lock-sha
fi

.venv/bin/python -m mtf.spark --fetch-jars >/dev/null
echo "setup: ready (.venv, Delta jars in $(.venv/bin/python -c 'from mtf.spark import jars_dir; print(jars_dir())'))"
