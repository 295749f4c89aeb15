"""free_port: ports for servers the tests, drills and benchmarks start themselves."""

from __future__ import annotations

import socket
from pathlib import Path

import store.backup as ports


def test_ports_come_from_below_the_kernels_ephemeral_range_and_never_twice() -> None:
    # An ephemeral port can be taken by any outgoing connection before the server binds it
    # (the Patroni "Address already in use" flake); one below the range cannot.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    got = [ports.free_port() for _ in range(200)]
    assert all(1024 <= p < low for p in got), [p for p in got if not 1024 <= p < low]
    assert len(set(got)) == len(got)
    for p in got[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))  # each is free to bind


def test_a_port_something_listens_on_is_not_handed_out(monkeypatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports.free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        ports._HANDED_OUT.discard(taken)
        spare = ports.free_port()
        ports._HANDED_OUT.discard(spare)
        draws = iter([taken, taken, spare])
        monkeypatch.setattr(ports._PORTS, "randrange", lambda lo, hi: next(draws))
        assert ports.free_port() == spare
        assert taken not in ports._HANDED_OUT
