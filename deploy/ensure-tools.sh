#!/usr/bin/env bash
# Tools the deployment files are validated with (tests/test_deploy_manifests.py), from Debian's
# packages, installed only when missing: docker-compose 1.29 (`docker-compose config`, which needs
# no Docker engine) and promtool (package prometheus: `promtool check rules|config`).
# The Kubernetes manifests are checked with the PyPI package kubernetes-validate (dev extra).
set -euo pipefail

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "ensure-tools: missing ${missing[*]}; run as root (or apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "ensure-tools: installing ${missing[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The prometheus package starts a server on :9090 we do not want; promtool is all we need.
    if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi
docker-compose version --short >/dev/null
promtool --version >/dev/null 2>&1
