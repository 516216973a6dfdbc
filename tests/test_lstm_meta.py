"""The LSTM meta-learner (Ravi & Larochelle 2017) against a hand-written unroll of eq. 2-4 and finite differences."""

from __future__ import annotations

import math

import pytest
import torch

from metaserve.algorithms.lstm_meta import preprocess
from metaserve.api import as_config
from metaserve.config import ConfigError
from metaserve.experiment import build_learner
from metaserve.tasks.sinusoid import Sinusoid

H = 3


def setup(steps: int = 2):
    config = as_config(
        {
            "seed": 3,
            "task": {"name": "sinusoid", "shots": 4, "query": 4},
            "model": {"name": "mlp", "hidden": [4]},
            "algorithm": {"name": "lstm-meta", "inner_steps": steps, "lstm_hidden": H, "init_lr": 0.1},
            "train": {"dtype": "float64", "device": "cpu", "vectorize": "off"},
        }
    )
    learner = build_learner(config)
    params = learner.initial_params()
    # move the weights off their near-zero initialisation so every term of the gates matters
    gen = torch.Generator().manual_seed(0)
    params = {
        k: v + 0.3 * torch.randn(v.shape, generator=gen, dtype=v.dtype) if k.startswith("meta.") else v
        for k, v in params.items()
    }
    task = Sinusoid(shots=4, query=4).sample(3, 0, 0, None, "train").to("cpu", torch.float64)
    return learner, params, task


def mlp(theta: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2 = theta
    return torch.relu(x @ w1.T + b1) @ w2.T + b2


def prep(v: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Andrychowicz et al.'s preprocessing written elementwise in Python."""
    rows = [
        [math.log(abs(e)) / p, math.copysign(1.0, e)] if abs(e) >= math.exp(-p) else [-1.0, math.exp(p) * e]
        for e in v.tolist()
    ]
    return torch.tensor(rows, dtype=torch.float64)


def reference_unroll(params, x, y, steps, frozen=None):
    """Eq. 2-4 step by step with plain tensors; `frozen` replays recorded (grad, loss) pairs as constants."""
    names = ["learner.0.weight", "learner.0.bias", "learner.2.weight", "learner.2.bias"]
    m = {k.removeprefix("meta."): v for k, v in params.items() if k.startswith("meta.")}
    theta = torch.cat([params[k].reshape(-1) for k in names])
    n = theta.numel()
    h, c = torch.zeros(n, H, dtype=theta.dtype), torch.zeros(n, H, dtype=theta.dtype)
    i, f = torch.zeros(n, dtype=theta.dtype), torch.zeros(n, dtype=theta.dtype)
    record = []
    for t in range(steps):
        if frozen is None:
            th = theta.detach().requires_grad_(True)
            parts = [th[0:4].reshape(4, 1), th[4:8], th[8:12].reshape(1, 4), th[12:13]]
            loss = ((mlp(parts, x) - y) ** 2).mean()
            (g,) = torch.autograd.grad(loss, th)
            g, loss = g.detach(), loss.detach()
            record.append((g, loss))
        else:
            g, loss = frozen[t]
        inp = torch.cat([prep(g), prep(loss.reshape(1)).expand(n, 2)], 1)
        gates = inp @ m["layer1.x2g.weight"].T + m["layer1.x2g.bias"] + h @ m["layer1.s2g.weight"].T
        gi, gf, gg, go = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
        c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
        h = torch.sigmoid(go) * torch.tanh(c)
        w_i, b_i = m["input_gate.weight"][0], m["input_gate.bias"]
        w_f, b_f = m["forget_gate.weight"][0], m["forget_gate.bias"]
        i = torch.sigmoid(torch.cat([h, theta[:, None], i[:, None]], 1) @ w_i + b_i)  # eq. 3
        f = torch.sigmoid(torch.cat([h, theta[:, None], f[:, None]], 1) @ w_f + b_f)  # eq. 4
        theta = f * theta - i * g  # eq. 2: c_t = f_t c_{t-1} + i_t (-grad)
    parts = [theta[0:4].reshape(4, 1), theta[4:8], theta[8:12].reshape(1, 4), theta[12:13]]
    return parts, record


def test_preprocessing_is_log_sign_above_the_threshold_and_scaled_below():
    v = torch.tensor([0.5, -2.0, 1e-6, -3e-7, 0.0], dtype=torch.float64)
    torch.testing.assert_close(preprocess(v, 10.0), prep(v))


def test_adapted_learner_equals_the_hand_written_lstm_unroll_and_adapt_continues_the_state():
    learner, params, task = setup()
    alg = learner.algorithm
    adapted = alg.adapt(params, task.support_x, task.support_y, steps=2)
    want, _ = reference_unroll(params, task.support_x, task.support_y, 2)
    got = [adapted[k] for k in ("learner.0.weight", "learner.0.bias", "learner.2.weight", "learner.2.bias")]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    # one step, then one more from the carried state = two steps (the evaluation curve is the true unroll)
    once = alg.adapt(params, task.support_x, task.support_y, steps=1)
    twice = alg.adapt(once, task.support_x, task.support_y, steps=1)
    for k in adapted:
        torch.testing.assert_close(twice[k], adapted[k], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(alg.predict(adapted, task.query_x), mlp(want, task.query_x), rtol=1e-10, atol=1e-12)


def test_meta_gradient_matches_finite_differences_with_the_learner_gradients_held_constant():
    learner, params, task = setup()
    fields = (task.support_x, task.support_y, task.query_x, task.query_y)
    contribution, metrics = learner.algorithm.contribute(params, *fields)
    _, frozen = reference_unroll(params, task.support_x, task.support_y, 2)

    def query_loss(p):
        parts, _ = reference_unroll(p, task.support_x, task.support_y, 2, frozen=frozen)
        return float(((mlp(parts, task.query_x) - task.query_y) ** 2).mean())

    assert metrics["loss"].item() == pytest.approx(query_loss(params), rel=1e-10)
    eps = 1e-6
    for key, idx in [
        ("learner.0.weight", (1, 0)),
        ("learner.2.bias", (0,)),
        ("meta.input_gate.weight", (0, H)),
        ("meta.forget_gate.bias", (0,)),
        ("meta.layer1.x2g.weight", (2, 0)),
        ("meta.layer1.s2g.weight", (7, 1)),
    ]:
        up, down = dict(params), dict(params)
        up[key], down[key] = params[key].clone(), params[key].clone()
        up[key][idx] += eps
        down[key][idx] -= eps
        fd = (query_loss(up) - query_loss(down)) / (2 * eps)
        assert contribution[key][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), key


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("lstm_hidden", 0, "greater than or equal to 1"),
        ("lstm_hidden", 1000, "less than or equal to 256"),
        ("init_lr", 1.0, "less than 1"),
        ("inner_steps", 0, "greater than or equal to 1"),
    ],
)
def test_lstm_sizes_and_rates_are_validated_with_one_sentence(key, value, allowed):
    with pytest.raises(ConfigError, match=rf"algorithm\.{key}={value!r}: Input should be {allowed}"):
        as_config({"algorithm": {"name": "lstm-meta", key: value}})
