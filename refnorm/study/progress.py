"""A tiny progress bar on stderr: no dependency, one line redrawn in place on a terminal, a
line per tenth of the work otherwise (logs, CI).

    [##########--------------------]  33%  12/36 runs  1:05 elapsed  ~2:10 left  adding bn_lstm ...
"""
import sys
import time


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    def __init__(self, stream=None, width=30):
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def start(self, total, runs=None):
        self.total, self.done, self.runs, self.count = max(total, 1), 0, runs, 0
        self.t0 = time.perf_counter()
        self.next_tenth = 0.1
        self._draw("starting")

    def update(self, amount, label=""):
        self.done += amount
        self.count += 1
        self._draw(label)

    def close(self):
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, label):
        frac = min(self.done / self.total, 1.0)
        if not self.tty:
            if frac + 1e-12 < self.next_tenth and self.done < self.total and self.done:
                return
            while self.next_tenth <= frac + 1e-12:
                self.next_tenth += 0.1
        elapsed = time.perf_counter() - self.t0
        left = f"  ~{_clock(elapsed * (1 - frac) / frac)} left" if frac > 0 else ""
        runs = f"  {self.count}/{self.runs} runs" if self.runs else ""
        bar = "#" * int(frac * self.width) + "-" * (self.width - int(frac * self.width))
        line = f"[{bar}] {100 * frac:3.0f}%{runs}  {_clock(elapsed)} elapsed{left}  {label}"
        if self.tty:
            self.stream.write("\r" + line[:119].ljust(119))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
