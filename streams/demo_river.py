"""An online-learning candidate for the demo's market: a river linear model (opt-in).

The demo's own candidates are fixed functions: the market drifts and they decay, which is
the seed's point. This module gives the other answer the seed names, retraining to prevent
decay, done continuously: a river pipeline (standard-scaled numeric features, one-hot
categorical ones, a linear regression trained by SGD) fitted on the *pre-drift* market, as
the primary was. Named twice, once with ``--learn``, the same model answers as a frozen
copy and as a learner, and the evaluator's labelled MAE shows what learning bought:

    understudy worker \\
      --candidate 'price-river-frozen@1=streams.demo_river:pretrained' \\
      --candidate 'price-river-learn@1=streams.demo_river:pretrained' \\
      --learn price-river-learn@1 --state-dir ./learner-state

``pretrained`` is a factory: each spec gets its own model object (a module-level model
named twice would be one object, and the "frozen" copy would learn too). Deterministic:
the same seed gives the same model.
"""

from __future__ import annotations

from typing import Any

from streams.demo_models import NUMERIC, HouseMarket

__all__ = ["PRETRAIN_EVENTS", "pretrained", "untrained"]

#: Pre-drift sales the model is fitted on before it is shadowed.
PRETRAIN_EVENTS = 4_000


def untrained() -> Any:
    """The pipeline, before any learning (river is imported here: the demo does not need it)."""
    from river import compose, linear_model, optim, preprocessing

    numeric = compose.Select(*NUMERIC) | preprocessing.StandardScaler()
    categorical = compose.Select("region", "property_type") | preprocessing.OneHotEncoder()
    return (numeric + categorical) | linear_model.LinearRegression(
        optimizer=optim.SGD(0.02), intercept_lr=0.1
    )


def pretrained(events: int = PRETRAIN_EVENTS, seed: int = 101) -> Any:
    """:func:`untrained`, then one pass over ``events`` sales of the pre-drift market
    (drift 0), drawn with ``seed`` (not the demo service's seed, 7: other houses)."""
    model = untrained()
    market = HouseMarket(seed)
    for numeric, categorical, _ in market.sample(events, 0.0):
        model.learn_one({**numeric, **categorical}, market.price(numeric, categorical, 0.0))
    return model
