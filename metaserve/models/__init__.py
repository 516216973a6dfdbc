"""Models evaluated functionally: `mlp` for regression, `conv4` for images."""
from __future__ import annotations

from torch import nn

from metaserve.config import ImageTaskConfig, ModelConfig, TaskConfig
from metaserve.models.conv4 import Conv4
from metaserve.models.mlp import MLP


def build_model(cfg: ModelConfig, task: TaskConfig, with_head: bool = True) -> nn.Module:
    """The network for a task: its input/output sizes come from the task config."""
    if cfg.name == "mlp":
        hidden = (cfg.hidden,) if isinstance(cfg.hidden, int) else tuple(cfg.hidden or (40, 40))
        return MLP(1, 1, hidden)
    assert isinstance(task, ImageTaskConfig)
    hidden = cfg.hidden if isinstance(cfg.hidden, int) else (cfg.hidden[0] if cfg.hidden else 64)
    return Conv4(task.channels, task.ways if with_head else 0, hidden, task.image_size)


__all__ = ["MLP", "Conv4", "build_model"]
