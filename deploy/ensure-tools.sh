#!/usr/bin/env bash
# Tools the deployment files are validated with (tests/test_deploy_manifests.py), from Debian's
# packages, installed only when missing: docker-compose 1.29 (`docker-compose config`, which needs
# no Docker engine) and promtool (package prometheus: `promtool check rules|config`).
# The Kubernetes manifests are checked with the PyPI package kubernetes-validate (dev extra).
set -euo pipefail

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# HAProxy in front of two API instances (tests/test_api_failover.py; deploy/haproxy/api.cfg).
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "ensure-tools: missing ${missing[*]}; run as root (or apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "ensure-tools: installing ${missing[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The prometheus and haproxy packages start servers we do not want; the tests start their
    # own (haproxy) or need only the checker (promtool).
    if command -v systemctl >/dev/null 2>&1; then
        for svc in prometheus haproxy; do
            [[ " ${missing[*]} " == *" $svc "* ]] && systemctl disable --now "$svc" >/dev/null 2>&1 || true
        done
    fi
fi
docker-compose version --short >/dev/null
promtool --version >/dev/null 2>&1
haproxy -v >/dev/null
