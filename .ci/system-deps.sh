#!/usr/bin/env bash
# System packages the test suite needs; idempotent, root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# tests/test_browser.py drives it with Playwright (Playwright's own browser download is not reachable)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# tests/test_proxy_route.py: a real sshd per simulated node (the job's SSH service), iptables in its namespace
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bash .ci/docker-engine.sh
