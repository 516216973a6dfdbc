"""Models evaluated functionally: `mlp` for regression, `conv4` for images (+ metric heads)."""
from __future__ import annotations

from torch import nn

from metaserve.config import ImageTaskConfig, ModelConfig, TaskConfig
from metaserve.models.conv4 import Conv4
from metaserve.models.metric_heads import METRIC_MODELS
from metaserve.models.mlp import MLP


def build_model(cfg: ModelConfig, task: TaskConfig, with_head: bool | str = True) -> nn.Module:
    """The network for a task: its input/output sizes come from the task config.

    `with_head`: True a linear classifier, False the embedding only, or the name of a metric head
    ('relation', 'siamese', 'matching'; models/metric_heads.py).
    """
    if cfg.name == "mlp":
        hidden = (cfg.hidden,) if isinstance(cfg.hidden, int) else tuple(cfg.hidden or (40, 40))
        return MLP(3 if getattr(task, "oracle", False) else 1, 1, hidden)  # oracle inputs: (x, amplitude, phase)
    assert isinstance(task, ImageTaskConfig)
    hidden = cfg.hidden if isinstance(cfg.hidden, int) else (cfg.hidden[0] if cfg.hidden else 64)
    if isinstance(with_head, str):
        return METRIC_MODELS[with_head](task.channels, hidden, task.image_size)
    return Conv4(task.channels, task.ways if with_head else 0, hidden, task.image_size)


__all__ = ["MLP", "Conv4", "build_model"]
