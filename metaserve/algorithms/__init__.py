"""The meta-learners, all behind one interface (`Algorithm.contribute` / `adapt` / `predict`).

Importing this package registers every algorithm module's entries (metaserve/registry.py);
`build_algorithm` constructs the one a config names.
"""

from __future__ import annotations

from torch import nn

from metaserve.algorithms.anil import ANIL, ANIL1st
from metaserve.algorithms.base import Algorithm, TaskUpdate, map_tasks
from metaserve.algorithms.lazy import LazyMAML, LazyReptile
from metaserve.algorithms.lstm_meta import LSTMMeta
from metaserve.algorithms.maltml import MALTML, MALTML2nd
from metaserve.algorithms.maml import FOMAML, MAML
from metaserve.algorithms.mann import MANN
from metaserve.algorithms.matching import Matching
from metaserve.algorithms.meta_sgd import MetaSGD, MetaSGD1st
from metaserve.algorithms.metanet import MetaNet
from metaserve.algorithms.pretrain import Pretrain
from metaserve.algorithms.protonet import ProtoNet
from metaserve.algorithms.relation import Relation
from metaserve.algorithms.reptile import Reptile
from metaserve.algorithms.siamese import Siamese
from metaserve.config import Config
from metaserve.registry import entry


def build_algorithm(config: Config, model: nn.Module, vectorize: bool) -> Algorithm:
    """The algorithm `config.algorithm` names, bound to a model and the task kind."""
    return entry(config.algorithm.name).build(config.algorithm, model, config.task, vectorize)


__all__ = [
    "Algorithm",
    "TaskUpdate",
    "map_tasks",
    "build_algorithm",
    "MAML",
    "FOMAML",
    "Reptile",
    "LazyMAML",
    "LazyReptile",
    "ProtoNet",
    "Matching",
    "Relation",
    "Siamese",
    "Pretrain",
    "MALTML",
    "MALTML2nd",
    "LSTMMeta",
    "MANN",
    "MetaNet",
    "MetaSGD",
    "MetaSGD1st",
    "ANIL",
    "ANIL1st",
]
