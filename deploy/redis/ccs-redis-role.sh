#!/bin/sh
# Before a CCS Redis data node starts: ask the sentinels who the master is, and write this
# node's role into ROLE_FILE, which the node's redis.conf includes last
# (`include /etc/redis/ccs-role.conf`):
#   - the sentinels' majority names another node: `replicaof <host> <port>`;
#   - they name this node (SELF, host:port as the sentinels know it): `replicaof no one`;
#   - no majority answers: ROLE_FILE is left as it is (the first start of a new cluster, or
#     the sentinels down), with a warning.
#
# Why: a master that was killed and is restarted by its supervisor comes back as a master with
# the data it had when it died, until the sentinels turn it into a replica. If the new master
# is failed over in that window (a second fault, or a false alarm on a loaded machine), the
# sentinels may promote the restarted node, and every write since the first failover is lost
# (seen in the failover test on 2026-12-07: a second failover 1 s after the first promoted
# the restarted node; 149 silence deadlines went back 14 s and fell due for phones that were
# still reporting). Started as a replica of the current master, the node holds nothing the
# master does not, and can only be promoted once it has synchronised.
#
# Usage: ccs-redis-role.sh ROLE_FILE SELF SENTINEL [SENTINEL...]   (SENTINEL: host:port)
# Environment: CCS_REDIS_SENTINEL_MASTER (default ccs), REDISCLI_AUTH for the sentinels'
# password if they have one. systemd: deploy/redis/redis-server.service.d/ccs-role.conf.
set -eu

if [ "$#" -lt 3 ]; then
    echo "usage: $0 ROLE_FILE SELF_HOST:PORT SENTINEL_HOST:PORT..." >&2
    exit 2
fi
role_file=$1
self=$2
shift 2
name=${CCS_REDIS_SENTINEL_MASTER:-ccs}
total=$#
answers=""
for sentinel in "$@"; do
    host=${sentinel%:*}
    port=${sentinel##*:}
    # Two lines (host, port) when the sentinel knows the master; nothing or an error if not.
    got=$(timeout 3 redis-cli -h "$host" -p "$port" --raw \
              SENTINEL get-master-addr-by-name "$name" 2>/dev/null | paste -sd: -) || got=""
    case "$got" in
        *:*[0-9]) answers="$answers$got
" ;;
    esac
done

# The address named by more than half of all the sentinels given, if any.
master=$(printf '%s' "$answers" | sed '/^$/d' | sort | uniq -c | sort -rn |
         awk -v total="$total" 'NR == 1 && $1 * 2 > total { print $2 }')

if [ -z "$master" ]; then
    echo "ccs-redis-role: no majority of the $total sentinel(s) named a master of '$name';" \
         "$role_file left as it is" >&2
    exit 0
fi

tmp="$role_file.tmp.$$"
if [ "$master" = "$self" ]; then
    echo "replicaof no one" > "$tmp"
    echo "ccs-redis-role: the sentinels name this node ($self) master of '$name'" >&2
else
    echo "replicaof ${master%:*} ${master##*:}" > "$tmp"
    echo "ccs-redis-role: the sentinels name $master master of '$name': starting as its replica" >&2
fi
mv "$tmp" "$role_file"
