"""Online learning in the shadow: a river candidate that learns from ``<prefix>.labels``.

- :mod:`streams.learning.store`: features awaiting their labels, bounded (pure);
- :mod:`streams.learning.checkpoint`: the learner's state on local disk, atomically (pure);
- :mod:`streams.learning.timeorder`: which matched labels may be learned yet (pure);
- :mod:`streams.learning.labels`: the learner's own consumer of ``<prefix>.labels``;
- :mod:`streams.learning.refill`: after a restart, the requests scored since the checkpoint
  back into the store;
- :mod:`streams.learning.learner`: the worker's side: following its assignment, learning on
  the candidate's lane, periodic checkpoints.

See docs/online-learning.md.
"""

from streams.learning.checkpoint import Checkpoint, checkpoint_path
from streams.learning.learner import LearnSettings, OnlineLearner, ScoredBatch
from streams.learning.store import FeatureStore, StoreStats

__all__ = [
    "Checkpoint",
    "FeatureStore",
    "LearnSettings",
    "OnlineLearner",
    "ScoredBatch",
    "StoreStats",
    "checkpoint_path",
]
