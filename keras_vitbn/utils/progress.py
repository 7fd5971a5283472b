"""A running count for long jobs (done of total, time elapsed, time left), and numbers as people read them.

The experiment runner and the tuning search print one `Progress.line()` per
run or trial. The estimate is the mean time of the items this process has
computed, times the items still to compute: items that were already done (a
cache hit, a replayed trial) count as done but take no time, so they neither
speed up nor slow down the estimate. When the job knows beforehand how many
items it will compute (`to_compute`), cached items later in the list are not
counted as work left.

Example:

>>> progress = Progress(total=4)
>>> progress.line()
'0/4 done, 0 s elapsed, ETA unknown'
>>> progress.skip()            # one found done (cached): no time measured
>>> progress.finish(seconds=60.0)
>>> progress.line(elapsed=61.0)
'2/4 done, 61 s elapsed, about 2.0 min left'
"""

import math
import time


def format_duration(seconds):
    """'42 s', '3.5 min', '2 h 05 min': rounded as a person reads a clock."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        minutes = seconds / 60
        return f"{minutes:.1f} min" if minutes < 10 else f"{minutes:.0f} min"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest:02d} min"


def format_percent(fraction):
    """0.74912 -> '74.9%'; None or NaN -> 'n/a'."""
    if fraction is None or math.isnan(fraction):
        return "n/a"
    return f"{100 * float(fraction):.1f}%"


class Progress:
    """Counts items done of `total` and estimates the time left.

    Args:
        total: int or None. Items in the whole job; None when unknown (a
            distributed worker), and then no estimate is given.
        to_compute: int or None. Items of `total` that will be computed (not
            found done); None: every item not done yet. Defaults to None.
        clock: callable. Seconds, monotonic. Defaults to `time.monotonic`.
    """

    def __init__(self, total, to_compute=None, clock=time.monotonic):
        self.total = total
        self.to_compute = to_compute
        self.clock = clock
        self.start = clock()
        self.done = 0
        self.computed_seconds = []

    def skip(self, count=1, planned=False):
        """`count` items found already done (cached or replayed): done, but no time to learn from.

        `planned=True`: they were counted in `to_compute` (another process took them).
        """
        self.done += count
        if planned and self.to_compute is not None:
            self.to_compute -= count

    def finish(self, seconds):
        """One item computed in `seconds`."""
        self.done += 1
        self.computed_seconds.append(float(seconds))

    def eta(self):
        """Estimated seconds left, or None before the first computed item or without a total."""
        if self.total is None or not self.computed_seconds:
            return None
        mean = sum(self.computed_seconds) / len(self.computed_seconds)
        if self.to_compute is not None:
            return mean * max(0, self.to_compute - len(self.computed_seconds))
        return mean * max(0, self.total - self.done)

    def line(self, elapsed=None):
        """'3/12 done, 4.2 min elapsed, about 11 min left' (or 'ETA unknown')."""
        elapsed = self.clock() - self.start if elapsed is None else elapsed
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        eta = self.eta()
        if self.total is not None and self.done >= self.total:
            tail = "finished"
        elif eta is None:
            tail = "ETA unknown"
        else:
            tail = f"about {format_duration(eta)} left"
        return f"{count} done, {format_duration(elapsed)} elapsed, {tail}"
