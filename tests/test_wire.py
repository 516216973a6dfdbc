"""The wire format: parameters and contributions cross processes as one flat buffer."""

import numpy as np
import pytest
import torch

from metaserve.runtime.wire import flatten, layout_of, unflatten


def _params() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = {"w1": (4, 1), "b1": (4,), "w2": (3, 4), "scalar": (), "b2": (3,)}
    return {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}


def test_round_trip_restores_names_shapes_and_values_from_a_read_only_buffer():
    params = _params()
    flat = flatten(params)
    assert flat.shape == (4 + 4 + 12 + 1 + 3,) and flat.dtype == np.float64
    flat.setflags(write=False)  # as Ray hands it out
    back = unflatten(flat, layout_of(params))
    assert list(back) == list(params)
    for k, v in params.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v)
    back["w1"] += 1.0  # writable, and a copy: the buffer is untouched
    assert np.array_equal(flat, flatten(params))


def test_unflatten_converts_dtype_and_rejects_a_buffer_of_the_wrong_size():
    params = _params()
    flat = flatten(params)
    as32 = unflatten(flat, layout_of(params), dtype=torch.float32)
    assert all(v.dtype == torch.float32 for v in as32.values())
    assert torch.allclose(as32["w2"].double(), params["w2"], rtol=1e-6)
    with pytest.raises(ValueError, match="23 values does not fit the model's 24 parameters"):
        unflatten(flat[:-1], layout_of(params))
