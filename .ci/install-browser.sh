#!/usr/bin/env bash
# Installs what the web demo's browser test (tests/serve/test_serve_web_browser.py) needs: Debian's
# Chromium at /usr/bin/chromium, and the playwright package (the `web-test` extra) in the project's
# virtual environment, creating it with `make venv` if needed. Never `playwright install`: the
# system browser is used. Idempotent and quiet; needs root for apt-get.
# Usage: .ci/install-browser.sh [VENV]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
if [ ! -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi
[ -x "$VENV/bin/python" ] || make -s venv VENV="$VENV"
if ! "$VENV/bin/python" -c "import playwright.sync_api" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q -e ".[web-test]"
fi
/usr/bin/chromium --version >/dev/null 2>&1 || { echo "install-browser: /usr/bin/chromium does not run" >&2; exit 1; }
