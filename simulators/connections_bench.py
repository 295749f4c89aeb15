"""What a phone's open connection costs the broker: `python -m simulators.connections_bench`.

Opens N MQTT connections to the project's Mosquitto as phones do (MQTT 3.1.1, keep-alive 60 s,
each subscribed at QoS 1 to its own command topic `devices/{id}/cmd`), holds them idle with
their PINGREQs, and reports the broker's resident memory per connection and its CPU while
they sit idle. An input of docs/capacity.md (connections per broker node); the limit on one
machine is also the broker's open-file limit (`ulimit -n`), said beside the figure.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import struct
import time
from pathlib import Path

from simulators.bench import _calibrate, _pids_named, _proc_cpu
from simulators.rawmqtt import KEEPALIVE_S, _str, _varint, connect_packet

PINGREQ = b"\xc0\x00"


def subscribe_packet(mid: int, topic: str) -> bytes:
    body = struct.pack("!H", mid) + _str(topic.encode()) + b"\x01"
    return b"\x82" + _varint(len(body)) + body


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _broker_pid(port: int) -> int:
    for pid in _pids_named("mosquitto"):
        try:
            conf = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        path = next((c.decode() for c in conf if c.endswith(b".conf")), "")
        if path and f"listener {port}" in Path(path).read_text():
            return pid
    raise SystemExit(f"no mosquitto process with a listener on {port}")


def _read_all(socks: list[socket.socket], need: dict[int, int], timeout: float) -> None:
    """Read until every socket got `need[fileno]` bytes (CONNACK + SUBACK) or timeout."""
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()  # epoll: file numbers beyond select()'s 1,024
    waiting = 0
    for s in socks:
        if need.get(s.fileno(), 0) > 0:
            sel.register(s, selectors.EVENT_READ)
            waiting += 1
    try:
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(0.5):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                data = conn.recv(4096)
                if not data:
                    raise ConnectionError("the broker closed a connection")
                need[conn.fileno()] -= len(data)
                if need[conn.fileno()] <= 0:
                    sel.unregister(conn)
                    waiting -= 1
    finally:
        sel.close()
    if waiting:
        raise TimeoutError(f"{waiting} connections got no CONNACK/SUBACK")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=15_000)
    ap.add_argument("--hold", type=float, default=130.0,
                    help="seconds to hold them idle (two keep-alive rounds by default)")
    ap.add_argument("--port", type=int, default=1884)
    args = ap.parse_args(argv)
    pid = _broker_pid(args.port)
    print(f"speed reference: 10 million Python additions in {_calibrate():.2f} s")
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    files = next((ln.split()[3] for ln in limits if ln.startswith("Max open files")), "?")
    rss0, cpu0 = _rss_kib(pid), _proc_cpu(pid) or 0.0
    socks: list[socket.socket] = []
    need: dict[int, int] = {}
    t0 = time.monotonic()
    for k in range(args.connections):
        s = socket.create_connection(("127.0.0.1", args.port))
        s.setblocking(True)
        s.sendall(connect_packet(f"ccs-connbench-{k}", None, None)
                  + subscribe_packet(1, f"devices/connbench-{k}/cmd"))
        socks.append(s)
        need[s.fileno()] = 4 + 5  # CONNACK, SUBACK
        if len(socks) % 1000 == 0:
            _read_all(socks[-1000:], need, 30)
    _read_all(socks, need, 30)
    took = time.monotonic() - t0
    time.sleep(2)
    rss1, cpu1 = _rss_kib(pid), _proc_cpu(pid) or 0.0
    print(f"{len(socks):,} connections, each subscribed to its command topic, in {took:.1f} s "
          f"({len(socks) / took:,.0f}/s; broker CPU {cpu1 - cpu0:.1f} s)")
    hold0, cpu_h0 = time.monotonic(), _proc_cpu(pid) or 0.0
    next_ping = hold0 + KEEPALIVE_S / 2
    while (left := hold0 + args.hold - time.monotonic()) > 0:
        if time.monotonic() >= next_ping:
            for s in socks:
                s.sendall(PINGREQ)
            _read_all(socks, {s.fileno(): 2 for s in socks}, 30)
            next_ping += KEEPALIVE_S / 2
        time.sleep(min(left, 1.0))
    held = time.monotonic() - hold0
    cpu_h = (_proc_cpu(pid) or 0.0) - cpu_h0
    rss2 = _rss_kib(pid)
    print(f"broker resident memory: {rss0 / 1024:.1f} MiB before, {rss2 / 1024:.1f} MiB with "
          f"them = {(max(rss1, rss2) - rss0) * 1024 / len(socks):,.0f} bytes per connection")
    print(f"broker CPU while they sat idle {held:.0f} s (a PINGREQ each {KEEPALIVE_S // 2} s): "
          f"{100 * cpu_h / held:.2f} % of one core")
    print(f"broker open-file limit: {files} (one per connection)")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
