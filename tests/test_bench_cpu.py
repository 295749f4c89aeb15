"""The bench's CPU meter (simulators/bench.py `CpuMeter`): where a process group's time went.

A server's short-lived helpers (PostgreSQL's parallel and autovacuum workers) start and end
within a run; the meter must count them through their parent, and the machine's total must
bound what it lists.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simulators.bench import CpuMeter, _machine_busy

# A parent that forks children which each burn CPU for a while and are reaped at once: the
# shape of a postmaster starting parallel workers, under a process name of its own.
_FORKER = """
import os, sys, time
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        end = time.process_time() + 0.25
        while time.process_time() < end:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
sys.stdout.write("done\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


@contextmanager
def _python_named(tmp_path: Path, name: str, script: str) -> Iterator[subprocess.Popen[str]]:
    """Python running `script` under a process name (comm) of its own, killed at the end."""
    exe = tmp_path / name
    exe.symlink_to(sys.executable)
    proc = subprocess.Popen([str(exe), "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_children_that_end_within_the_run_count_through_their_parent(tmp_path: Path):
    name = f"ccsburn{os.getpid() % 100000}"  # a process name (comm) no other process has
    with _python_named(tmp_path, name, _FORKER) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        meter = CpuMeter({"by name": name, "by pid": [proc.pid]})
        meter.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        meter.stop()
    # Three children of 0.25 s each, all ended before the second reading.
    assert 0.6 <= meter.used["by name"] <= 1.5, meter.used
    # A group of given pids counts only those: the parent itself barely ran.
    assert meter.used["by pid"] < 0.3, meter.used
    # The machine was at least as busy as the group it contains.
    assert meter.machine >= meter.used["by name"] * 0.9
    assert meter.wall > 0


def test_a_process_that_ends_counts_only_what_it_used_after_the_start(tmp_path: Path):
    name = f"ccsgone{os.getpid() % 100000}"
    # A parent whose child burns 0.4 s before the first reading and nothing after it, then
    # ends: its earlier time must not be counted when the parent reaps it.
    script = """
import os, signal, sys, time
pid = os.fork()
if pid == 0:
    end = time.process_time() + 0.4
    while time.process_time() < end:
        pass
    os.write(1, b"burnt\\n")
    time.sleep(60)
    os._exit(0)
sys.stdin.readline()
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
sys.stdout.write("reaped\\n"); sys.stdout.flush()
sys.stdin.readline()
"""
    with _python_named(tmp_path, name, script) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "burnt"
        meter = CpuMeter({"g": name})
        meter.start()
        proc.stdin.write("go\n")  # the parent ends its child and reaps it
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "reaped"
        meter.stop()
    assert meter.used["g"] < 0.2, meter.used


def test_machine_busy_grows_with_work_done_here():
    before = _machine_busy()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    assert _machine_busy() - before >= 0.25


def test_the_drain_is_counted_by_its_expected_end():
    from simulators.bench import _next_poll_s

    assert _next_poll_s(None, (10.0, 5_000), 900_000) == 0.25  # no rate yet
    # 10,000/s with 990,000 to go: far from the end, at most every 5 s.
    assert _next_poll_s((0.0, 0), (1.0, 10_000), 1_000_000) == 5.0
    # 40,000 to go at 10,000/s: half the 4 s it needs.
    assert _next_poll_s((0.0, 0), (1.0, 10_000), 50_000) == 2.0
    # Within a second of the end: every 0.25 s, for a precise end mark.
    assert _next_poll_s((0.0, 0), (1.0, 10_000), 11_000) == 0.25
    # Nothing stored since the last count: stay close.
    assert _next_poll_s((0.0, 10_000), (1.0, 10_000), 50_000) == 0.25
    assert _next_poll_s((0.0, 0), (1.0, 50_000), 50_000) == 0.25  # done
