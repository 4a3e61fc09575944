"""Profiles of the gateway under the benchmark's load (py-spy), and their summary.

``python -m tests.bench.run --profile DIR ...`` attaches ``py-spy record`` to the
gateway process for every measured gateway run and writes DIR/<run>.txt (py-spy's
"raw" collapsed stacks, one line per distinct stack: ``frame;frame;... count``).
Profiled runs are slower (py-spy samples at 100 Hz): use them to see where the time
goes, not for the table.

    python -m tests.bench.profile DIR/gateway-sqlite-lmtp-1KB-c10-1.txt [--top 30]

prints, over all threads, the frames with the most samples on the stack
(inclusive) and on top (self), and the split by thread.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


class Recorder:
    """``py-spy record --pid`` for the length of one run."""

    def __init__(self, pid: int, output: Path, rate: int = 100):
        self.output = output
        self.proc: subprocess.Popen | None = None
        if not Path(PY_SPY).exists():
            print("bench: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [PY_SPY, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads",
             "--nonblocking", "--output", str(output)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    return f"{m.group('func')} ({m.group('file')})"


def summarise(path: Path, top: int = 25) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else ""
            names = [_frame_name(fr) for fr in frames if not fr.startswith(("thread", "process"))]
            total += count
            threads[thread] += count
            for name in set(names):
                inclusive[name] += count
            if names:
                own[names[-1]] += count
    if not total:
        return f"{path}: no samples"
    out = [f"{path}: {total} samples"]
    out.append("by thread:")
    out += [f"  {100 * n / total:5.1f}%  {t or '(unnamed)'}" for t, n in threads.most_common(8)]
    out.append(f"inclusive (on the stack), top {top}:")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    out.append(f"self (on top), top {top}:")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    for path in args.files:
        print(summarise(path, args.top))
        print()


if __name__ == "__main__":
    main()
