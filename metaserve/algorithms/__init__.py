"""The meta-learners, all behind one interface (`Algorithm.task_update` / `outer_step`)."""
from __future__ import annotations

from torch import nn

from metaserve.algorithms.base import Algorithm, OuterConfig, TaskUpdate, merge
from metaserve.algorithms.lazy import LazyMAML, LazyReptile
from metaserve.algorithms.maml import FOMAML, MAML
from metaserve.algorithms.protonet import ProtoNet
from metaserve.algorithms.reptile import Reptile
from metaserve.config import AlgorithmConfig, ImageTaskConfig, ProtoNetConfig, TaskConfig

GRADIENT = {"maml": MAML, "fomaml": FOMAML, "reptile": Reptile, "lazy-maml": LazyMAML, "lazy-reptile": LazyReptile}
USES_HEAD = {name: True for name in GRADIENT} | {"protonet": False}


def build_algorithm(cfg: AlgorithmConfig, model: nn.Module, task: TaskConfig, vectorize: bool) -> Algorithm:
    """The algorithm named by the config, bound to a model and the task kind."""
    kind = "classification" if isinstance(task, ImageTaskConfig) else "regression"
    outer_cfg = OuterConfig(lr=cfg.outer.lr, optimizer=cfg.outer.optimizer)
    if isinstance(cfg, ProtoNetConfig):
        return ProtoNet(model, kind, outer_cfg, ways=task.ways, vectorize=vectorize)
    kwargs = dict(inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps, eval_inner_steps=cfg.eval_inner_steps, vectorize=vectorize)
    if cfg.name in ("lazy-maml", "lazy-reptile"):
        kwargs |= dict(leap=cfg.leap, leap_target=cfg.leap_target)
    return GRADIENT[cfg.name](model, kind, outer_cfg, **kwargs)


__all__ = ["Algorithm", "TaskUpdate", "OuterConfig", "merge", "build_algorithm", "MAML", "FOMAML", "Reptile", "LazyMAML", "LazyReptile", "ProtoNet", "USES_HEAD"]
