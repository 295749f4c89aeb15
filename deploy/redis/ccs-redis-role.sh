#!/bin/sh
# Before a CCS Redis data node starts: ask the sentinels who the master is, and write this
# node's role into ROLE_FILE, which redis-server reads last (`--include ROLE_FILE` on its command
# line, after redis.conf and after any `replicaof` that Sentinel's CONFIG REWRITE appended to it):
#   - the sentinels' majority names another node: `replicaof <host> <port>`;
#   - they name this node: `replicaof no one`, but only once no failover of it is under way
#     (the sentinels flag it o_down or failover_in_progress: wait, at most
#     CCS_REDIS_ROLE_WAIT_S seconds, for them to name another);
#   - no majority answers (a new cluster's first start, or the sentinels down): ROLE_FILE is
#     emptied, so the node starts as redis.conf says, which Sentinel keeps up to date.
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
# Usage: ccs-redis-role.sh ROLE_FILE SELF SENTINEL [SENTINEL...]
#   SELF: this node's host:port as the sentinels know it; SENTINEL: host:port ([v6]:port too).
# Environment: CCS_REDIS_SENTINEL_MASTER (default ccs), CCS_REDIS_ROLE_WAIT_S (default 30),
# REDISCLI_AUTH for the sentinels' password if they have one.
# systemd: deploy/redis/redis-server.service.d/ccs-role.conf.
set -eu

if [ "$#" -lt 3 ]; then
    echo "usage: $0 ROLE_FILE SELF_HOST:PORT SENTINEL_HOST:PORT..." >&2
    exit 2
fi
role_file=$1
self=$2
shift 2
name=${CCS_REDIS_SENTINEL_MASTER:-ccs}
wait_s=${CCS_REDIS_ROLE_WAIT_S:-30}

# host:port, [v6]:port -> "host port"
split() {
    host=${1%:*}
    port=${1##*:}
    host=${host#[}
    host=${host%]}
    echo "$host $port"
}

# The sentinels, each once.
sentinels=$(printf '%s\n' "$@" | sed '/^$/d' | sort -u)
total=$(printf '%s\n' "$sentinels" | wc -l)

ask() {  # ask SENTINEL COMMAND...: the sentinel's raw answer, one line per element
    set -- $(split "$1") "$@"
    host=$1 port=$2
    shift 3
    timeout 3 redis-cli -h "$host" -p "$port" --raw "$@" 2>/dev/null || true
}

majority() {  # the host:port that more than half of the sentinels name master, if any
    for s in $sentinels; do
        ask "$s" SENTINEL get-master-addr-by-name "$name" | paste -sd: - |
            grep -E '^[^[:space:]]+:[0-9]+$' || true
    done | sort | uniq -c | sort -rn |
        awk -v total="$total" 'NR == 1 && $1 * 2 > total { print $2 }'
}

local_addresses() {
    echo 127.0.0.1 ::1 localhost "$(hostname)" "$(hostname -f 2>/dev/null || true)"
    hostname -I 2>/dev/null || true
}

is_self() {  # is_self HOST:PORT: the address given as SELF, or a local address on SELF's port
    [ "$1" = "$self" ] && return 0
    set -- $(split "$1")
    [ "$2" = "${self##*:}" ] || return 1
    for a in $(local_addresses); do
        [ "$1" = "$a" ] && return 0
    done
    return 1
}

failing_over() {  # do the sentinels report a failover of the master they name under way?
    for s in $sentinels; do
        ask "$s" SENTINEL MASTER "$name" | awk 'prev == "flags" { print } { prev = $0 }'
    done | grep -qE 'o_down|failover_in_progress'
}

write_role() {
    tmp="$role_file.tmp.$$"
    trap 'rm -f "$tmp"' EXIT
    printf '%s' "$1" > "$tmp"
    mv "$tmp" "$role_file"
    trap - EXIT
}

deadline=$(( $(date +%s) + wait_s ))
while :; do
    master=$(majority)
    if [ -z "$master" ]; then
        write_role ""
        echo "ccs-redis-role: no majority of the $total sentinel(s) named a master of '$name':" \
             "starting as redis.conf says" >&2
        exit 0
    fi
    if ! is_self "$master"; then
        set -- $(split "$master")
        write_role "replicaof $1 $2
"
        echo "ccs-redis-role: the sentinels name $master master of '$name': starting as its replica" >&2
        exit 0
    fi
    if ! failing_over; then
        write_role "replicaof no one
"
        echo "ccs-redis-role: the sentinels name this node ($self) master of '$name'" >&2
        exit 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        write_role "replicaof no one
"
        echo "ccs-redis-role: a failover of this node ($self) was still under way after" \
             "${wait_s} s: starting as master, as the sentinels still name it" >&2
        exit 0
    fi
    sleep 1
done
