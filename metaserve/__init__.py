"""metaserve: distributed gradient-based meta-learning on Ray.

import metaserve
result = metaserve.train("configs/sinusoid-maml.yaml")
model = metaserve.load(result.run_dir)
adapted = model.adapt(support_x, support_y)
adapted.predict(query_x)
"""

from metaserve.api import AdaptedModel, MetaModel, evaluate_checkpoint, load, train
from metaserve.config import Config, ConfigError, load_config

__all__ = ["train", "load", "evaluate_checkpoint", "MetaModel", "AdaptedModel", "Config", "ConfigError", "load_config"]
__version__ = "0.1.0"
