"""The demo's story: a house-price service whose market moves out of the city.

The seed's example of model decay is a real-estate price model whose inputs shifted fast
during the pandemic: buyers left city centres for larger, more distant homes with gardens.
This module plays that story so every stage of Understudy has something true to find:

- :data:`primary` (``price-linear@3``) is the production model, a linear model fitted on
  the pre-pandemic market.
- :data:`ridge_candidate` is a refit of the same model with slightly shrunk coefficients,
  vectorized with numpy (``predict_many``): it agrees closely with the primary.
- :data:`tree_candidate` is a small hand-made ensemble of split rules, scored one request
  at a time (``predict_one``) with a simulated per-request cost, so it is visibly slower;
  it prices the "big house far away" corner higher, which is where the drifted market
  goes, so it disagrees noticeably there and is right to.
- :data:`flaky_candidate` is the ridge model failing on ~1% of requests, to exercise error
  handling end to end.
- :class:`HouseMarket` draws requests, and their true prices, as the market drifts.

Prices are in thousands. Every model is deterministic given its input, so reruns agree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np

__all__ = [
    "CANDIDATE_SPECS",
    "CHANNELS",
    "NUMERIC",
    "PRIMARY_ID",
    "PROPERTY_TYPES",
    "REGIONS",
    "HouseMarket",
    "LinearPriceModel",
    "RidgePriceModel",
    "TreePriceModel",
    "flaky_candidate",
    "primary",
    "ridge_candidate",
    "tree_candidate",
]

REGIONS = ("north", "south", "east", "west", "center")
PROPERTY_TYPES = ("apartment", "townhouse", "house")
CHANNELS = ("web", "app")
NUMERIC = ("sqft", "bedrooms", "bathrooms", "age_years", "distance_km", "lot_size")

PRIMARY_ID = "price-linear@3"
#: The demo's shadow candidates, as ``understudy worker --candidate`` specs.
CANDIDATE_SPECS = (
    "price-ridge@4=streams.demo_models:ridge_candidate",
    "price-tree@1=streams.demo_models:tree_candidate",
)

Features = dict[str, Any]
Sample = tuple[dict[str, float], dict[str, str], dict[str, str]]

#: Price floor: no model quotes less than a parking space.
_FLOOR = 30.0


class LinearPriceModel:
    """``price = intercept + coef . numeric + region offset + property-type offset``.

    The production model: fitted (here: written down) on the pre-pandemic market, where
    every kilometre from the centre cost money and a garden was worth little.
    """

    def __init__(
        self,
        intercept: float,
        coef: dict[str, float],
        region: dict[str, float],
        property_type: dict[str, float],
    ) -> None:
        self.intercept = intercept
        self.coef = dict(coef)
        self.region = dict(region)
        self.property_type = dict(property_type)

    def predict_one(self, x: Features) -> float:
        price = self.intercept
        for name, c in self.coef.items():
            price += c * float(x[name])
        price += self.region.get(x.get("region", ""), 0.0)
        price += self.property_type.get(x.get("property_type", ""), 0.0)
        return max(price, _FLOOR)


class RidgePriceModel(LinearPriceModel):
    """The same linear form, scored a micro-batch at a time with one numpy product."""

    def predict_many(self, xs: Sequence[Features]) -> list[float]:
        names = tuple(self.coef)
        coef = np.fromiter(self.coef.values(), dtype=np.float64, count=len(names))
        # one C-level tuple per request and one conversion of the whole batch: building the
        # matrix value by value in Python cost as much as the rest of the model
        row = itemgetter(*names)
        rows = [row(x) for x in xs]
        matrix = np.array(rows, dtype=np.float64).reshape(len(xs), len(names))
        region, property_type = self.region.get, self.property_type.get
        offsets = np.array(
            [
                region(x.get("region", ""), 0.0) + property_type(x.get("property_type", ""), 0.0)
                for x in xs
            ],
            dtype=np.float64,
        )
        prices = np.maximum(self.intercept + matrix @ coef + offsets, _FLOOR)
        return prices.tolist()


class TreePriceModel:
    """Three hand-made regression trees, averaged: the "new approach" candidate.

    Each tree splits on a few features and adds a local slope, like a fitted gradient
    boosted model would. ``cost_us`` busy-waits that many microseconds per request to stand
    in for the feature lookups a real tree service does, so its latency is visibly higher
    than the linear models' (and the latency guardrail has something to see).
    """

    def __init__(self, cost_us: float = 150.0) -> None:
        self.cost_us = cost_us

    def predict_one(self, x: Features) -> float:
        if self.cost_us > 0:
            deadline = time.perf_counter() + self.cost_us * 1e-6
            while time.perf_counter() < deadline:
                pass
        sqft = float(x["sqft"])
        dist = float(x["distance_km"])
        lot = float(x["lot_size"])
        age = float(x["age_years"])
        rooms = float(x["bedrooms"]) + 0.5 * float(x["bathrooms"])
        region = x.get("region", "")
        ptype = x.get("property_type", "")

        # Tree 1: size, split by how central the home is.
        if dist < 8.0:
            t1 = 38.0 + 0.215 * sqft
        elif dist < 25.0:
            t1 = 0.2 * sqft
        else:
            t1 = -20.0 + 0.19 * sqft
        # Tree 2: the garden-and-space premium that the drifted market pays for.
        if sqft > 2400.0 and lot > 600.0:
            t2 = 0.09 * lot + (70.0 if dist >= 25.0 else 25.0)
        elif ptype == "apartment":
            t2 = -35.0 + 0.02 * lot
        else:
            t2 = 0.04 * lot
        # Tree 3: condition, rooms and location.
        t3 = 14.0 * rooms - (1.6 * age if age < 60.0 else 70.0 + 0.4 * age)
        t3 += {"center": 70.0, "north": 20.0, "west": 10.0, "south": -5.0}.get(region, 0.0)
        return max(t1 + t2 + t3, _FLOOR)


class FlakyPriceModel(RidgePriceModel):
    """The ridge model that raises on ~1% of requests, chosen by the input (deterministic).

    Its ``predict_many`` raises for a whole batch that holds one unlucky request, which is
    what a real vectorized model does; the worker must then rescore request by request so
    that only the unlucky ones become error predictions.
    """

    @staticmethod
    def _unlucky(x: Features) -> bool:
        return math.floor(float(x["sqft"]) * 1000.0) % 100 == 0

    def predict_one(self, x: Features) -> float:
        if self._unlucky(x):
            raise RuntimeError(f"feature store timeout for sqft={x['sqft']:.3f}")
        return super().predict_one(x)

    def predict_many(self, xs: Sequence[Features]) -> list[float]:
        for x in xs:
            if self._unlucky(x):
                raise RuntimeError(f"feature store timeout for sqft={x['sqft']:.3f}")
        return super().predict_many(xs)


_PRIMARY_COEF = {
    "sqft": 0.2,
    "bedrooms": 12.0,
    "bathrooms": 9.0,
    "age_years": -1.4,
    "distance_km": -3.2,
    "lot_size": 0.03,
}
_PRIMARY_REGION = {"center": 70.0, "north": 18.0, "west": 8.0, "east": 0.0, "south": -6.0}
_PRIMARY_TYPE = {"apartment": -30.0, "townhouse": -10.0, "house": 0.0}

primary = LinearPriceModel(60.0, _PRIMARY_COEF, _PRIMARY_REGION, _PRIMARY_TYPE)

_RIDGE_COEF = {
    "sqft": 0.196,
    "bedrooms": 11.0,
    "bathrooms": 8.5,
    "age_years": -1.3,
    "distance_km": -3.0,
    "lot_size": 0.032,
}
_RIDGE_REGION = {"center": 66.0, "north": 17.0, "west": 8.0, "east": 1.0, "south": -5.0}
_RIDGE_TYPE = {"apartment": -28.0, "townhouse": -9.0, "house": 0.0}

ridge_candidate = RidgePriceModel(64.0, _RIDGE_COEF, _RIDGE_REGION, _RIDGE_TYPE)
tree_candidate = TreePriceModel()
flaky_candidate = FlakyPriceModel(64.0, _RIDGE_COEF, _RIDGE_REGION, _RIDGE_TYPE)


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


class HouseMarket:
    """Draws house-price requests, and their true prices, from a market that can drift.

    ``drift`` in ``[0, 1]`` moves the market from its pre-pandemic state (0) to the moved-out
    one (1): homes further from the centre, larger, with bigger lots, fewer apartments and
    fewer central listings, more traffic from the app; and true prices that reward space and
    punish distance less. All randomness comes from one ``numpy.random.Generator(seed)``, so
    a seed replays the same requests.
    """

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._label_rng = np.random.Generator(np.random.PCG64([seed, 1]))

    def sample(self, n: int, drift: float = 0.0) -> list[Sample]:
        """``n`` requests as ``(numeric, categorical, context)`` dicts."""
        if not 0.0 <= drift <= 1.0:
            raise ValueError(f"drift must be in [0, 1], got {drift}")
        rng = self.rng
        d = drift
        region_p = (
            np.array([0.18, 0.18, 0.18, 0.18, 0.28]) * (1 - d)
            + np.array([0.24, 0.22, 0.2, 0.24, 0.10]) * d
        )
        type_p = np.array([0.45, 0.25, 0.30]) * (1 - d) + np.array([0.2, 0.25, 0.55]) * d
        app_p = _lerp(0.35, 0.65, d)

        regions = rng.choice(len(REGIONS), size=n, p=region_p)
        ptypes = rng.choice(len(PROPERTY_TYPES), size=n, p=type_p)
        app = rng.random(n) < app_p
        central = np.array([r == "center" for r in REGIONS])[regions]
        dist_scale = np.where(central, _lerp(3.0, 4.0, d), _lerp(12.0, 24.0, d))
        distance = rng.gamma(2.0, dist_scale / 2.0)
        sqft = np.clip(rng.lognormal(math.log(_lerp(1500.0, 2000.0, d)), 0.35, n), 350.0, 9000.0)
        is_apartment = ptypes == 0
        sqft = np.where(is_apartment, sqft * 0.6, sqft)
        bedrooms = np.clip(np.round(sqft / 550.0 + rng.normal(0.0, 0.7, n)), 1, 8)
        bathrooms = np.clip(np.round(bedrooms * 0.6 + rng.normal(0.0, 0.5, n)), 1, 6)
        age = np.clip(rng.gamma(2.0, 14.0, n), 0.0, 120.0)
        lot = np.where(
            is_apartment,
            0.0,
            rng.lognormal(math.log(_lerp(300.0, 520.0, d)), 0.6, n) * (1.0 + distance / 40.0),
        )

        out: list[Sample] = []
        for i in range(n):
            region = REGIONS[regions[i]]
            numeric = {
                "sqft": float(sqft[i]),
                "bedrooms": float(bedrooms[i]),
                "bathrooms": float(bathrooms[i]),
                "age_years": float(age[i]),
                "distance_km": float(distance[i]),
                "lot_size": float(lot[i]),
            }
            categorical = {"region": region, "property_type": PROPERTY_TYPES[ptypes[i]]}
            context = {"region": region, "channel": CHANNELS[int(app[i])]}
            out.append((numeric, categorical, context))
        return out

    def price(self, numeric: dict[str, float], categorical: dict[str, str], drift: float) -> float:
        """The true sale price of a request in a market at ``drift``, with noise: the label.

        Before the drift it is the primary's linear model plus noise; with the drift,
        distance costs less, space and gardens are worth more and city centres cool.
        """
        d = drift
        x = {**numeric, **categorical}
        base = primary.predict_one(x)
        shift = d * (
            1.6 * float(numeric["distance_km"])  # half the distance penalty
            + 0.03 * float(numeric["sqft"])
            + 0.03 * float(numeric["lot_size"])
            - (45.0 if categorical.get("region") == "center" else 0.0)
        )
        noise = float(self._label_rng.normal(0.0, 12.0 + 0.04 * base))
        return max(base + shift + noise, _FLOOR)
