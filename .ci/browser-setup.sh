#!/usr/bin/env bash
# Install what the browser tests (tests/test_admin_browser.py) need; safe to run twice.
#   .ci/browser-setup.sh VENV
# Debian's chromium is used (no `playwright install`: no browser download at test time).
set -euo pipefail
venv="${1:?usage: .ci/browser-setup.sh VENV (the virtualenv to install playwright into)}"

if [ ! -x /usr/bin/chromium ]; then
    sudo_cmd=""
    if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium
fi

if ! "$venv/bin/python" -c "import playwright.sync_api" 2>/dev/null; then
    "$venv/bin/pip" install --quiet "playwright>=1.49,<2"
fi
echo "browser tests: $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium missing'), playwright $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("playwright"))')"
