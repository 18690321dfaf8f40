"""The reads-in-flight tuner climbs to the count a device serves fastest, and stays there."""

import numpy as np
import pytest

from layerprobe.features.inflight import InFlightTuner


def run(tuner: InFlightTuner, rate_of, windows: int, noise: float = 0.05, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    counts = []
    for _ in range(windows):
        k = tuner.count
        counts.append(k)
        rate = rate_of(k) * (1 + noise * rng.standard_normal())
        tuner.observe(nbytes=int(rate * 1.0), seconds=1.0, used=k)
    return counts


def tuner_settles(counts: list[int]) -> int:
    settled = counts[-20:]
    return max(set(settled), key=settled.count)


@pytest.mark.parametrize("best", [1, 2, 8, 16])
def test_converges_to_the_fastest_count(best):
    # A device that saturates at `best` readers and loses 20% per doubling past it.
    def rate_of(k):
        return 1e9 * min(k, best) / best * (0.8 ** max(0, np.log2(k / best)))

    counts = run(InFlightTuner(start=4), rate_of, windows=80)
    # Trials of a neighbour still happen, one window in EXPLORE_EVERY + 1.
    assert tuner_settles(counts) == best


def test_flat_device_stays_put_despite_noise():
    counts = run(InFlightTuner(start=4), lambda k: 1e9, windows=100, noise=0.04)
    # The last window may be a trial; the count it keeps returning to is 4.
    assert counts.count(4) > 0.7 * len(counts) and tuner_settles(counts) == 4


def test_windows_smaller_than_the_count_do_not_count():
    tuner = InFlightTuner(start=4)
    for _ in range(10):
        tuner.observe(nbytes=10**6, seconds=1.0, used=2)  # ramp windows of 1-2 chunks
    assert tuner.rates == {} and tuner.count == 4
