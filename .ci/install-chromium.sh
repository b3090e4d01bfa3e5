#!/usr/bin/env bash
# Headless Chromium for the report test (tests/test_report.py opens report.html in it); the test
# skips with a reason when it is missing. Debian's package, installed only when absent.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium
fi
