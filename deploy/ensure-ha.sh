#!/usr/bin/env bash
# The high-availability stack of the failover run (`make failover`, tests/test_pg_failover.py,
# simulators/pg_cluster.py), from Debian's packages, installed only when missing:
#   patroni      /usr/bin/patroni runs each PostgreSQL node (python3-etcd comes with it)
#   etcd-server  the store Patroni elects its leader in (etcd-client: etcdctl, for operators)
#   haproxy      sends the services to the node whose Patroni says it is the primary
# The run starts its own instances on free loopback ports: the packages' own services (etcd on
# :2379, haproxy with /etc/haproxy/haproxy.cfg) are not wanted and are stopped where systemd runs.
set -euo pipefail

need=()
for pair in /usr/bin/patroni:patroni /usr/bin/etcd:etcd-server /usr/bin/etcdctl:etcd-client \
            /usr/sbin/haproxy:haproxy; do
    [[ -x ${pair%%:*} ]] || need+=("${pair#*:}")
done
if ((${#need[@]} > 0)); then
    [[ $(id -u) -eq 0 ]] || { echo "ensure-ha: run as root to install ${need[*]}" >&2; exit 1; }
    echo "ensure-ha: installing ${need[*]} (Debian's packages)"
    export DEBIAN_FRONTEND=noninteractive
    # Other sessions' installs may hold the dpkg lock for a while: wait for it.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    systemctl disable --now etcd haproxy >/dev/null 2>&1 || true
fi
/usr/bin/patroni --version >/dev/null && etcd --version >/dev/null && haproxy -v >/dev/null
