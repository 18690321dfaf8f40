"""How many chunk reads the loader keeps in flight, tuned on the throughput it measures.

Why: one sequential reader leaves an SSD or a parallel file system mostly idle, and too many
readers thrash a single disk or compete with the copy threads for two cores. The best count
depends on the device, so it is found by hill climbing: after each window read from disk the
loader reports (bytes, seconds); every few windows the tuner tries a neighbour (twice or half the
current count) for one window and moves there if it was clearly faster. Throughputs are smoothed
per count, so one noisy window moves nothing. The count only changes how bytes arrive, never the
batches' order.
"""

from __future__ import annotations

START = 4
LOWEST, HIGHEST = 1, 16
EXPLORE_EVERY = 4  # windows at the current count between two trials of a neighbour
BETTER = 1.10  # a neighbour must be this much faster to be adopted
SMOOTHING = 0.5  # weight of the newest measure in a count's running throughput


class InFlightTuner:
    """`count` reads in flight for the next window; `observe(bytes, seconds, used)` after it."""

    def __init__(self, start: int = START, lowest: int = LOWEST, highest: int = HIGHEST) -> None:
        self.lowest, self.highest = lowest, max(lowest, highest)
        self.current = min(max(start, self.lowest), self.highest)
        self.count = self.current
        self.rates: dict[int, float] = {}
        self._since_trial = 0
        self._next_direction = 2.0  # try more readers first: the usual gain on SSDs and network file systems

    def observe(self, nbytes: int, seconds: float, used: int) -> None:
        """A window's disk reads: `nbytes` in `seconds` with `used` reads in flight (fewer than
        `count` when the window had fewer chunks; such a measure says nothing about `count`)."""
        if used < self.count or seconds <= 0 or nbytes <= 0:
            return
        rate = nbytes / seconds
        old = self.rates.get(used)
        self.rates[used] = rate if old is None else SMOOTHING * rate + (1 - SMOOTHING) * old
        if self.count != self.current:  # that was a trial
            if self.rates[self.count] > BETTER * self.rates.get(self.current, 0.0):
                self.current = self.count
            else:
                self._next_direction = 1 / self._next_direction  # try the other side next time
            self.count, self._since_trial = self.current, 0
            return
        self._since_trial += 1
        if self._since_trial >= EXPLORE_EVERY:
            trial = self._neighbour()
            if trial != self.current:
                self.count = trial

    def _neighbour(self) -> int:
        for direction in (self._next_direction, 1 / self._next_direction):
            trial = int(min(max(round(self.current * direction), self.lowest), self.highest))
            if trial != self.current:
                self._next_direction = direction
                return trial
        return self.current
