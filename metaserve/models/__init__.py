"""Models evaluated functionally: `mlp` for regression, `conv4` for images (+ metric heads, learner wrappers)."""

from __future__ import annotations

from typing import Any

from torch import nn

from metaserve.config import ImageTaskConfig, ModelConfig, TaskConfig
from metaserve.models.conv4 import Conv4
from metaserve.models.lstm_meta import LSTMMetaModel
from metaserve.models.mann import MANNModel
from metaserve.models.metanet import MetaNetModel
from metaserve.models.metric_heads import METRIC_MODELS
from metaserve.models.mlp import MLP


def build_model(cfg: ModelConfig, task: TaskConfig, head: str = "classifier", algorithm: Any = None) -> nn.Module:
    """The network for a task: its input/output sizes come from the task config.

    `head` (an algorithm's registry entry says which): 'classifier' a linear layer over task.ways
    classes, 'embedding' none, or a metric head ('relation', 'siamese', 'matching'; models/metric_heads.py);
    'lstm-meta' wraps the classifier with the LSTM meta-learner, 'mann' MANN's network (models/mann.py), 'metanet'
    Meta Networks' (models/metanet.py), sized by the `algorithm` section.
    """
    if head == "lstm-meta":
        return LSTMMetaModel(build_model(cfg, task), algorithm.lstm_hidden, algorithm.init_lr)
    if cfg.name == "mlp":
        hidden = (cfg.hidden,) if isinstance(cfg.hidden, int) else tuple(cfg.hidden or (40, 40))
        return MLP(3 if getattr(task, "oracle", False) else 1, 1, hidden)  # oracle inputs: (x, amplitude, phase)
    assert isinstance(task, ImageTaskConfig)
    hidden = cfg.hidden if isinstance(cfg.hidden, int) else (cfg.hidden[0] if cfg.hidden else 64)
    if head == "mann":
        return MANNModel(
            task.channels,
            hidden,
            task.image_size,
            task.ways,
            controller=algorithm.controller,
            controller_hidden=algorithm.controller_hidden,
            memory_size=algorithm.memory_size,
        )
    if head == "metanet":
        return MetaNetModel(
            task.channels,
            hidden,
            task.image_size,
            task.ways,
            embed_size=algorithm.embed_size,
            meta_hidden=algorithm.meta_hidden,
        )
    if head in METRIC_MODELS:
        return METRIC_MODELS[head](task.channels, hidden, task.image_size)
    return Conv4(task.channels, task.ways if head == "classifier" else 0, hidden, task.image_size)


__all__ = ["MLP", "Conv4", "build_model"]
