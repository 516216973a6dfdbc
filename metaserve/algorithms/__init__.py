"""The meta-learners, all behind one interface (`Algorithm.task_update` / `outer_step`)."""
from __future__ import annotations

from torch import nn

from metaserve.algorithms.base import Algorithm, OuterConfig, TaskUpdate, merge
from metaserve.algorithms.lazy import LazyMAML, LazyReptile
from metaserve.algorithms.maltml import MALTML, MALTML2nd
from metaserve.algorithms.maml import FOMAML, MAML
from metaserve.algorithms.matching import Matching
from metaserve.algorithms.pretrain import Pretrain
from metaserve.algorithms.protonet import ProtoNet
from metaserve.algorithms.relation import Relation
from metaserve.algorithms.reptile import Reptile
from metaserve.algorithms.siamese import Siamese
from metaserve.config import (AlgorithmConfig, ImageTaskConfig, MALTML2ndConfig, MALTMLConfig, MatchingConfig, MetricConfig,
                              PretrainConfig, ProtoNetConfig, TaskConfig)
from metaserve.tasks.families import family_split

GRADIENT = {"maml": MAML, "fomaml": FOMAML, "reptile": Reptile, "lazy-maml": LazyMAML, "lazy-reptile": LazyReptile}
METRIC = {"protonet": ProtoNet, "matching": Matching, "relation": Relation, "siamese": Siamese}
# What build_model puts on the network: True a classifier head, False none, or a metric head by name.
USES_HEAD = {name: True for name in GRADIENT} | {"protonet": False, "matching": "matching", "relation": "relation",
                                                 "siamese": "siamese", "pretrain": True, "maltml": True, "maltml-2nd": True}


def build_algorithm(cfg: AlgorithmConfig, model: nn.Module, task: TaskConfig, vectorize: bool) -> Algorithm:
    """The algorithm named by the config, bound to a model and the task kind."""
    kind = "classification" if isinstance(task, ImageTaskConfig) else "regression"
    outer_cfg = OuterConfig(lr=cfg.outer.lr, optimizer=cfg.outer.optimizer)
    if isinstance(cfg, (ProtoNetConfig, MatchingConfig, MetricConfig)):
        extra = dict(fce=cfg.fce, fce_steps=cfg.fce_steps) if isinstance(cfg, MatchingConfig) else {}
        return METRIC[cfg.name](model, kind, outer_cfg, ways=task.ways, vectorize=vectorize, **extra)
    if isinstance(cfg, PretrainConfig):
        return Pretrain(model, kind, outer_cfg, inner_lr=cfg.inner_lr, eval_inner_steps=cfg.eval_inner_steps, vectorize=vectorize)
    if isinstance(cfg, (MALTMLConfig, MALTML2ndConfig)):
        family = dict(split=family_split(task.shots, task.ways if kind == "classification" else 1),
                      task_lr=cfg.task_lr, meta_lr=cfg.meta_lr, finetune_lr=cfg.finetune_lr, finetune_steps=cfg.finetune_steps,
                      vectorize=vectorize)
        if isinstance(cfg, MALTMLConfig):
            return MALTML(model, kind, outer_cfg, meta_learner=cfg.meta_learner, task_steps=cfg.task_steps,
                          meta_steps=cfg.meta_steps, **family)
        return MALTML2nd(model, kind, outer_cfg, **family)
    kwargs = dict(inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps, eval_inner_steps=cfg.eval_inner_steps, vectorize=vectorize)
    if cfg.name in ("lazy-maml", "lazy-reptile"):
        kwargs |= dict(leap=cfg.leap, leap_target=cfg.leap_target, meta_gradient=cfg.meta_gradient)
    return GRADIENT[cfg.name](model, kind, outer_cfg, **kwargs)


__all__ = ["Algorithm", "TaskUpdate", "OuterConfig", "merge", "build_algorithm", "MAML", "FOMAML", "Reptile", "LazyMAML", "LazyReptile", "ProtoNet",
           "Matching", "Relation", "Siamese", "Pretrain", "MALTML", "MALTML2nd", "USES_HEAD"]
