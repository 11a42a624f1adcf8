#!/usr/bin/env bash
# ./run.sh        set up .venv and run the main job (demo training on the embedded data)
# ./run.sh test   set up .venv and run the test suite (extra args go to pytest)
# ./run.sh lint   set up .venv and check formatting and lint (ruff), as CI does
# ./run.sh mutate set up .venv and mutation-test the guards (docs/testing.md)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "[run.sh] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when the dependency list changes, so a warm run starts at once.
stamp="$VENV/.installed-$(cat setup.py | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[run.sh] installing nfnets and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  rm -f "$VENV"/.installed-* && touch "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

case "${1:-}" in
  lint)
    "$VENV/bin/ruff" format --check .
    exec "$VENV/bin/ruff" check .
    ;;
  test)
    shift
    exec "$VENV/bin/python" -m pytest -q tests "$@"
    ;;
  mutate)
    shift
    if [ ! -x "$VENV/bin/mutmut" ]; then
      "$VENV/bin/python" -m pip install -q -e '.[test,mutation]'
    fi
    exec "$VENV/bin/python" -m tests.mutation "$@"
    ;;
  *)
    exec "$VENV/bin/python" -m experiments.demo "$@"
    ;;
esac
