"""MAML written the way users write it today: the baseline metaserve's throughput is compared with.

An `nn.Module` whose forward takes an optional list of "fast" weights (the pattern of Finn et al.'s
reference code and most PyTorch ports), `torch.autograd.grad(create_graph=True)` for the inner
steps, a Python loop over the tasks of the meta-batch, `loss.backward()` per task and
`torch.optim.Adam` for the outer step. No torch.func, no vmap, no metaserve maths.

Tasks come from metaserve's task distributions (the same numpy sampling every path pays for), so
the comparison is about the adaptation and meta-gradient code only.

Run alone:  .venv/bin/python -m benchmarks.plain_maml --task sinusoid --steps 50
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PlainMLP(nn.Module):
    """1-40-40-1 ReLU regressor with an optional list of fast weights."""

    def __init__(self, hidden: tuple[int, ...] = (40, 40)):
        super().__init__()
        widths = (1, *hidden, 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor, weights: list[Tensor] | None = None) -> Tensor:
        weights = list(self.parameters()) if weights is None else weights
        n = len(self.layers)
        for i in range(n):
            x = F.linear(x, weights[2 * i], weights[2 * i + 1])
            if i < n - 1:
                x = F.relu(x)
        return x


class PlainConv4(nn.Module):
    """Finn et al.'s conv4 (conv3x3, batch norm with batch statistics, ReLU, max-pool) x4 + linear head."""

    def __init__(self, ways: int = 5, hidden: int = 64, channels: int = 1, image_size: int = 28):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels if i == 0 else hidden, hidden, 3, padding=1) for i in range(4))
        self.norms = nn.ModuleList(nn.BatchNorm2d(hidden, track_running_stats=False) for _ in range(4))
        side = image_size // 16
        self.head = nn.Linear(hidden * side * side, ways)

    def forward(self, x: Tensor, weights: list[Tensor] | None = None) -> Tensor:
        weights = list(self.parameters()) if weights is None else weights
        # parameters() order: 4 x (conv w, conv b), 4 x (bn w, bn b), head w, head b
        for i in range(4):
            x = F.conv2d(x, weights[2 * i], weights[2 * i + 1], padding=1)
            x = F.batch_norm(x, None, None, weights[8 + 2 * i], weights[8 + 2 * i + 1], training=True)
            x = F.max_pool2d(F.relu(x), 2)
        return F.linear(x.flatten(1), weights[16], weights[17])


def meta_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    tasks,
    loss_fn,
    inner_lr: float,
    inner_steps: int,
    first_order: bool = False,
) -> float:
    """One outer step over `tasks`; returns the mean query loss. The textbook user loop."""
    opt.zero_grad()
    total = 0.0
    for t in tasks:
        fast = list(model.parameters())
        for _ in range(inner_steps):
            loss = loss_fn(model(t.support_x, fast), t.support_y)
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            fast = [w - inner_lr * g for w, g in zip(fast, grads)]
        query_loss = loss_fn(model(t.query_x, fast), t.query_y)
        (query_loss / len(tasks)).backward()
        total += float(query_loss.detach())
    opt.step()
    return total / len(tasks)


def build(task: str, hidden: int | None = None):
    """(model, loss_fn, distribution) of the sinusoid or Omniglot 5-way 1-shot benchmark."""
    from metaserve.config import ImageTaskConfig, SinusoidTaskConfig
    from metaserve.tasks import make_distribution

    if task == "sinusoid":
        return PlainMLP(), F.mse_loss, make_distribution(SinusoidTaskConfig(shots=10, query=10))
    dist = make_distribution(ImageTaskConfig(ways=5, shots=1, query=15))
    return PlainConv4(5, hidden or 64), F.cross_entropy, dist


def time_plain(
    task: str,
    meta_batch: int,
    inner_steps: int,
    inner_lr: float,
    first_order: bool,
    steps: int,
    warmup: int,
    hidden: int | None = None,
    seed: int = 0,
) -> dict:
    """Seconds per meta-step of the plain loop (tasks regenerated per step, as every metaserve path does)."""
    torch.manual_seed(seed)
    model, loss_fn, dist = build(task, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        tasks = [dist.sample(seed, step, i) for i in range(meta_batch)]
        meta_step(model, opt, tasks, loss_fn, inner_lr, inner_steps, first_order)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return {"step_time": sum(times) / len(times), "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["sinusoid", "omniglot"], default="sinusoid")
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--inner-lr", type=float, default=0.01)
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    a = p.parse_args()
    r = time_plain(a.task, a.meta_batch, a.inner_steps, a.inner_lr, a.first_order, a.steps, a.warmup)
    print(
        f"plain per-task loop, {a.task}: {r['step_time'] * 1e3:.1f} ms/meta-step, "
        f"{1 / r['step_time']:.2f} meta-steps/s, {a.meta_batch / r['step_time']:.1f} tasks/s"
    )


if __name__ == "__main__":
    main()
