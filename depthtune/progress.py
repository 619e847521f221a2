"""Progress with rate and time left: a tqdm bar on a terminal, plain periodic lines elsewhere.

    bar = Progress(len(items), "generate", unit="prompt", log=print, hint="--max-train-prompts N, --k N")
    for chunk in chunks:
        ...
        bar.update(len(chunk), tok_s=412)   # extra values show beside the bar and in the lines
    bar.close()

On a terminal (stderr is a TTY) a tqdm bar redraws in place with its rate and time left. When output
goes to a file or CI, a line is logged after the first batch, then every `every` seconds, then at the
end. Either way the first batch logs what the whole stage should take, and when that is long, the
options that shorten it: a two-hour run says so in its first minute.

The rate counts only work done in this process: a resumed stage (`initial` > 0) is not credited with
what an earlier process finished, so its time left is not too short.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

LONG = 600.0  # seconds: a stage expected to take longer than this names its caps


def duration(seconds: float) -> str:
    """3725 -> '1 h 2 min', 200 -> '3 min 20 s', 7.4 -> '7 s'."""
    s = round(max(0.0, seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{s} s"


class Progress:
    """Counts work towards `total` in `unit`s; see the module docstring for what it shows where."""

    def __init__(self, total: int, desc: str, unit: str = "it", log: Callable[[str], None] = print,
                 initial: int = 0, hint: str | None = None, every: float = 30.0, bar: bool | None = None,
                 file=None, clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.log, self.hint, self.every = total, desc, unit, log, hint, every
        self.n = self.start_n = initial
        self.clock = clock
        self.start = self.last_line = clock()
        self.postfix: dict = {}
        self.estimated = False
        self.bar = None
        if bar if bar is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file or sys.stderr,
                            dynamic_ncols=True, leave=False)  # close() logs the summary line instead

    def rate(self) -> float:
        """Units per second of this process's work (0 before any)."""
        return (self.n - self.start_n) / max(self.clock() - self.start, 1e-9)

    def left(self) -> float | None:
        r = self.rate()
        return (self.total - self.n) / r if r > 0 else None

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        self.postfix = postfix
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)
        if not self.estimated and self.n < self.total:
            self.estimated = True
            self._say(self.estimate())
        elif self.bar is None and self.clock() - self.last_line >= self.every and self.n < self.total:
            self._say(self.line())

    def estimate(self) -> str:
        """After the first batch: the whole stage's expected time, with the caps when it is long."""
        left = self.left()
        text = f"{self.line()}; expected about {duration(left)} more" if left is not None else self.line()
        if left is not None and left > LONG and self.hint:
            text += f" (shorten it with {self.hint})"
        return text

    def line(self) -> str:
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        left = self.left()
        return (f"  {self.desc}: {self.n}/{self.total} {self.unit}s{share}, {self.rate():.2f} {self.unit}s/s"
                f"{self._extra()}" + (f", {duration(left)} left" if left is not None else ""))

    def _extra(self) -> str:
        """postfix {tok_s: 412, loss: '0.71'} -> ', 412 tok/s, 0.71 loss'."""
        return "".join(f", {v} {k.replace('_', '/')}" for k, v in self.postfix.items())

    def close(self) -> None:
        """The closing line: how long it took and at what rate (nothing when nothing was done here)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.n > self.start_n:
            self.log(f"  {self.desc}: {self.n}/{self.total} {self.unit}s in {duration(self.clock() - self.start)} "
                     f"({self.rate():.2f} {self.unit}s/s{self._extra()})")

    def _say(self, text: str) -> None:
        self.last_line = self.clock()
        if self.bar is not None and self.log is print:
            self.bar.write(text, file=sys.stdout)  # above the bar, which then redraws
        else:
            self.log(text)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
