"""A worker's prefetched slice is exactly the slice it would have sampled, and only used when asked for."""
from __future__ import annotations

import numpy as np
import torch

from metaserve.api import as_config
from metaserve.experiment import build_distribution, build_learner
from metaserve.runtime.prefetch import SlicePrefetcher
from metaserve.tasks.sinusoid import SinusoidSpace

CONFIG = {"name": "prefetch", "seed": 11, "task": {"name": "sinusoid", "shots": 5, "query": 5},
          "model": {"name": "mlp", "hidden": [8]}, "train": {"dtype": "float64", "device": "cpu"}}


class CountingDistribution:
    """The sinusoid distribution, counting `sample` calls."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def sample(self, *args, **kwargs):
        self.calls += 1
        return self.inner.sample(*args, **kwargs)


def amplitudes(tasks) -> np.ndarray:
    """Each task's amplitude, recovered from its points (y = A sin(x - phi), all points share A)."""
    return np.array([float(t.support_y.abs().max()) for t in tasks])


def test_prefetched_slice_equals_a_fresh_sample_and_mismatches_resample(tmp_path):
    config = as_config({**CONFIG, "output_dir": str(tmp_path)})
    learner, inner = build_learner(config), build_distribution(config)
    dist = CountingDistribution(inner)
    prefetch = SlicePrefetcher(learner, dist)
    fresh = [inner.sample(config.seed, 5, i, None, "train") for i in (3, 4, 5)]

    prefetch.start(5, [3, 4, 5], None)
    got = prefetch.tasks(5, [3, 4, 5], None)
    assert dist.calls == 3  # sampled once, on the prefetch thread
    for a, b in zip(got, fresh):
        torch.testing.assert_close(a.query_y, b.query_y.double(), rtol=0, atol=0)
        torch.testing.assert_close(a.support_x, b.support_x.double(), rtol=0, atol=0)

    # A different task space than the one prefetched: sampled again, in the space asked for.
    prefetch.start(6, [0, 1], None)
    narrow = SinusoidSpace(amplitude=(4.9, 5.0))
    resampled = prefetch.tasks(6, [0, 1], narrow)
    assert dist.calls == 3 + 2 + 2
    assert np.all(amplitudes(resampled) > 4.5)  # ~A when x - phi reaches pi/2; default space reaches 0.1

    # Nothing prefetched for this step: sampled inline.
    prefetch.tasks(9, [2], None)
    assert dist.calls == 3 + 2 + 2 + 1


def test_a_failing_prefetch_falls_back_to_sampling_where_the_error_can_be_seen(tmp_path):
    config = as_config({**CONFIG, "output_dir": str(tmp_path)})
    learner, inner = build_learner(config), build_distribution(config)

    class FailsOnce(CountingDistribution):
        def sample(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 1:
                raise OSError("transient read error")
            return self.inner.sample(*args, **kwargs)

    dist = FailsOnce(inner)
    prefetch = SlicePrefetcher(learner, dist)
    prefetch.start(1, [0], None)
    got = prefetch.tasks(1, [0], None)
    torch.testing.assert_close(got[0].query_y, inner.sample(config.seed, 1, 0, None, "train").query_y.double(), rtol=0, atol=0)
    assert dist.calls == 2
