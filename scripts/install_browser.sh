#!/usr/bin/env bash
# Install headless Chromium (+ fonts) for tests/test_ui.py. Idempotent; never fails the caller:
# when it cannot install (not root, no apt, no network) it says why and exits 0 — the UI tests then
# skip with that reason (or FAIL when CI=true, see tests/ui_helpers.py).
set -u
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  echo "install_browser: chromium present ($(command -v chromium || echo /usr/bin/chromium))"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install_browser: chromium missing and not root: cannot install (apt-get install chromium fonts-dejavu-core)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: chromium missing and no apt-get on this system: cannot install" >&2
  exit 0
fi
echo "install_browser: installing chromium + fonts with apt-get (a minute or two)..."
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core fonts-liberation >/dev/null; then
  echo "install_browser: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
else
  echo "install_browser: apt-get install chromium failed: UI tests will skip (or fail when CI=true)" >&2
fi
exit 0
