"""Where a process spends its time: py-spy samples of running processes, summarised.

`Profiler` samples a set of processes for a while (py-spy record, raw collapsed stacks,
non-blocking so the process is not paused) and `summarise` turns each into the functions with
the most samples at the top of the stack ("self") and in the stack ("inclusive"), which is
what `make bench` prints beside its figures.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:)]+)(?::\d+)?\)$")


def py_spy() -> str | None:
    """The py-spy executable (the dev dependencies install it next to this Python)."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


# Samples per second. py-spy's own CPU grows with it: sampling a busy Python process with a
# 30-frame stack for 10 s cost it 0.64 s of CPU at 100 Hz and 0.19 s at 25 Hz (py-spy 0.4,
# this machine, 2026-12-07). The bench profiles five processes at once on a box it keeps
# nearly saturated: at 100 Hz that was about a third of a core for the profile's 20 s, and the
# 5-minute runs' latency stalls began in that window (BENCHMARKS.md, issue 13, session 12).
# At 25 Hz a 20-s profile still holds some hundreds of busy samples per worker.
RATE_HZ = 25


class Profiler(threading.Thread):
    """Samples `pids` (name -> pid) for `duration_s`, starting at wall-clock time `start_at`."""

    def __init__(self, pids: dict[str, int], start_at: float, duration_s: float, outdir: Path,
                 rate: int = RATE_HZ) -> None:
        super().__init__(name="profiler", daemon=True)
        self.pids, self.start_at, self.duration_s = pids, start_at, duration_s
        self.outdir, self.rate = outdir, rate
        self.files: dict[str, Path] = {}
        self.error: str | None = None

    def run(self) -> None:
        exe = py_spy()
        if exe is None:
            self.error = "py-spy not installed (make install installs the dev dependencies)"
            return
        time.sleep(max(self.start_at - time.time(), 0.0))
        procs = []
        for name, pid in self.pids.items():
            out = self.outdir / f"profile-{name}.txt"
            out.unlink(missing_ok=True)
            procs.append((name, out, subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--duration", f"{self.duration_s:.0f}",
                 "--rate", str(self.rate), "--format", "raw", "--nonblocking", "--output",
                 str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        for name, out, p in procs:
            _, err = p.communicate(timeout=self.duration_s + 60)
            if out.exists():
                self.files[name] = out
            else:
                self.error = f"{name}: {err.decode(errors='replace').strip()[-300:]}"


def _frame_name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    f = m.group("file")
    for marker in ("site-packages/", "/work/", "lib/python3"):
        if marker in f:
            f = f.split(marker, 1)[1]
    parts = f.split("/")
    return f"{m.group('func')} ({'/'.join(parts[-2:])})"


def summarise(path: Path, top: int = 8) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, top self, top inclusive), as shares of all samples. py-spy leaves idle
    threads out (waiting in select() or on a queue), so the shares are of the time the
    process was busy."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if total == 0:
        return 0, [], []
    skip = ("<module>", "run (", "_bootstrap", "main (", "_run_module", "_run_code")
    inclusive = [(f, c / total) for f, c in incl.most_common() if not f.startswith(skip)]
    return total, [(f, c / total) for f, c in self_c.most_common(top)], inclusive[:top]
