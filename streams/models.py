"""Candidate models: loading them from a spec, and scoring micro-batches uniformly.

A shadow worker must run *any* model a team hands it, without knowing its library, and
must never crash because of it. The protocol is chosen from the loaded object, first match:

==================================  =====================================================
the object has                      how a micro-batch is scored
==================================  =====================================================
``predict_many(list_of_dicts)``     one call per batch (not for river: see below)
``predict_one(dict)``               one call per request (river's protocol)
``predict(X)`` (scikit-learn)       one call on a 2-D float64 array whose columns follow
                                    the declared feature order; ``predict_proba(X)``
                                    instead when the model has it, for class scores
an ONNX ``.onnx`` file              onnxruntime, like ``predict(X)`` (first input)
a function of one argument          ``f(list_of_dicts) -> sequence``, one call per batch
==================================  =====================================================

:meth:`Candidate.predict_batch` turns what the model returns into one :class:`Outcome` per
request: a regression value, a class label, class scores, the latency, or an error. A model
exception, a NaN, an infinity or an output of an unsupported type becomes an *error
outcome* for that request, never an exception into the worker (errors are data). For array
models a request without one of the declared features, or with a value that is not a
number, is an error outcome for that request alone: the other rows are still scored.

Output mapping (``bool`` is checked before ``int``, numpy scalars are unwrapped first):

==========================  =============================================================
model output                outcome
==========================  =============================================================
``float`` (finite)          ``value``: a regression output
``str``, ``int``, ``bool``  ``label`` = ``str(output)`` (so ``True`` -> ``"True"``)
``dict[label, float]``      ``scores`` (keys as ``str``), ``label`` = the arg-max key;
                            a ``predict_proba`` row becomes ``{classes_[j]: p_j}``
``None``                    error: a river classifier answers ``None`` before it has
                            learned anything
anything else, NaN, inf     error
==========================  =============================================================

Specs (``ID=target[?features=a,b,c]``), as given to ``understudy worker --candidate``:

- ``price-ridge@4=package.module:attr`` an importable module and an attribute (dotted
  paths such as ``module:holder.model`` work);
- ``price-tree@1=path/to/file.py:attr`` a Python file, imported under a private name;
- ``price-gbr@3=path/to/model.joblib`` a joblib file (scikit-learn's way of saving a
  model), ``price-river@2=path/to/model.pkl`` a pickle (``.pkl`` or ``.pickle``). Both
  run code while loading: only load files the operator names and trusts. A model is never
  loaded from a topic;
- ``price-onnx@1=path/to/model.onnx?features=sqft,bedrooms`` an ONNX model, run by
  onnxruntime (``pip install onnxruntime``).

``?features=a,b,c`` declares the column order of an array model (scikit-learn, ONNX). A
scikit-learn model fitted on a data frame knows its own order (``feature_names_in_``) and
needs none; if both are given they must be equal, so a spec cannot silently reorder the
columns a model was fitted on. A dict model with ``?features=`` is refused (it would be
ignored). Quote the spec in a shell: ``?`` is a glob character.

``attr`` is a model object, or a class or zero-argument factory whose call returns one, or
a function of one argument (the batch). The ``ID`` is the model id published with every
prediction, conventionally ``name@version``; an id without ``@`` gets ``@1`` so that every
id has a version. ``ID=`` may be left out: the attribute's name (or the file's stem) then
becomes the name.

Warm-up: every model is called once at load on the operator's example request
(``understudy worker --warm-up-request``) when there is one, else, when its feature order
is declared, on a synthetic request (every feature 0.0); one that raises, or answers a batch
of one with a number of outputs other than one, is refused with
:class:`~streams.errors.ModelLoadError` before any traffic. A dict model without an example
has no request to be called with: the worker warms it up on the first request it consumes,
before it publishes anything (see :mod:`streams.worker`).

Latency (see :class:`Candidate`): every published latency estimates what *one request
called alone* costs, as the production service pays it, never a batch's amortized share.

A river model works as a candidate through ``predict_one`` (its ``predict_many`` expects a
pandas DataFrame, so it is not used). Here the model only predicts; one the operator names
with ``--learn`` also learns from the ``labels`` topic while shadowed (predict, then learn),
which is the worker's business: see :mod:`streams.learning`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import pickle
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from streams.errors import ModelLoadError
from streams.native import float_outcomes as _native_outcomes
from streams.native import sample_points as _native_points

__all__ = [
    "DEFAULT_SAMPLE_RATE",
    "BatchModel",
    "Candidate",
    "LatencyStats",
    "OnlineModel",
    "Outcome",
    "load_candidate",
    "parse_spec",
    "to_outcome",
]

#: Error messages are cut to this many characters: a model that raises with a megabyte of
#: text must not turn every prediction event into a megabyte.
MAX_ERROR_CHARS = 500

#: Share of a vectorized candidate's requests that are also scored alone, to measure the
#: single-call latency that every published latency estimates (see :class:`Candidate`).
DEFAULT_SAMPLE_RATE = 1 / 32

#: Recent single-call measurements kept per candidate: the published estimates of the
#: requests not measured are drawn from these.
LATENCY_WINDOW = 256

_PICKLE_SUFFIXES = (".pkl", ".pickle")
_JOBLIB_SUFFIXES = (".joblib",)
_ONNX_SUFFIXES = (".onnx",)
_FILE_MODEL_SUFFIXES = _PICKLE_SUFFIXES + _JOBLIB_SUFFIXES + _ONNX_SUFFIXES

Features = dict[str, Any]


@runtime_checkable
class BatchModel(Protocol):
    """A model scored a micro-batch at a time (numpy, a compiled runtime, a remote call)."""

    def predict_many(self, xs: list[Features], /) -> Sequence[Any]: ...


@runtime_checkable
class OnlineModel(Protocol):
    """A model scored one request at a time: river's protocol."""

    def predict_one(self, x: Features, /) -> Any: ...


#: The ``scores`` of every outcome without class scores: one shared dict, never changed.
NO_SCORES: dict[str, float] = {}


class Outcome(NamedTuple):
    """One model's answer to one request, ready to become a Prediction event.

    Exactly one of ``value`` (regression), ``label`` (classification, with optional
    ``scores``) or ``error`` is set. ``latency_ms`` is set on errors too: a model that
    takes two seconds to fail is slow as well as wrong.

    A named tuple, immutable: one is made per request per candidate, and a tuple is made
    at a third of a frozen dataclass's cost (0.15 against 0.36 us, ``timeit``). ``scores``
    without class scores is the shared :data:`NO_SCORES`: read it, never change it.
    """

    value: float | None = None
    label: str | None = None
    scores: dict[str, float] = NO_SCORES
    latency_ms: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class RowError:
    """A request an array model could not be given (missing or non-numeric feature).

    Returned in place of that row's output, so one bad request costs one error outcome
    while the rest of the batch is scored.
    """

    message: str


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return _clip(text)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


_isfinite = math.isfinite
_new_tuple = tuple.__new__


def to_outcome(output: Any, latency_ms: float) -> Outcome:
    """Map one raw model output to an :class:`Outcome` (see the module's table); never raises."""
    if type(output) is float and _isfinite(output):  # a regression answer: the usual case
        return _new_tuple(Outcome, (output, None, NO_SCORES, latency_ms, None))
    try:
        return _to_outcome(output, latency_ms)
    except Exception as exc:  # an output object whose .item() or __str__ raises
        return Outcome(latency_ms=latency_ms, error=_error_text(exc))


def to_outcomes(outputs: Iterable[Any], latencies: Iterable[float]) -> list[Outcome]:
    """:func:`to_outcome` of each (output, latency) pair, in one loop: it runs once per
    request per candidate, and the call per pair cost as much as the tuple.

    A batch of finite float answers with float latencies (a regression model's usual
    batch) is made by the C extension where it was built: the same tuples, in 0.05 instead
    of 0.18 us each (``timeit``, 500 pairs)."""
    if _native_outcomes is not None and type(outputs) is list and type(latencies) is list:
        made = _native_outcomes(Outcome, NO_SCORES, outputs, latencies)
        if made is not None:
            return made
    return python_to_outcomes(outputs, latencies)


def python_to_outcomes(outputs: Iterable[Any], latencies: Iterable[float]) -> list[Outcome]:
    """:func:`to_outcomes` in Python: what runs without the C extension, and for the
    batches it hands back."""
    isfinite, new = _isfinite, _new_tuple
    return [
        new(Outcome, (output, None, NO_SCORES, latency, None))
        if type(output) is float and isfinite(output)
        else to_outcome(output, latency)
        for output, latency in zip(outputs, latencies, strict=True)
    ]


def _to_outcome(output: Any, latency_ms: float) -> Outcome:
    if isinstance(output, RowError):
        return Outcome(latency_ms=latency_ms, error=_clip(output.message))
    # numpy scalars and 0-d arrays: unwrap to the Python value they hold.
    if not isinstance(output, str | bytes | dict) and getattr(output, "shape", None) == ():
        output = output.item()
    if output is None:
        return Outcome(latency_ms=latency_ms, error="ValueError: model returned None")
    if isinstance(output, bool):
        return Outcome(label=str(output), latency_ms=latency_ms)
    if isinstance(output, float):
        if not math.isfinite(output):
            return Outcome(latency_ms=latency_ms, error=f"ValueError: non-finite output {output}")
        return Outcome(value=output, latency_ms=latency_ms)
    if isinstance(output, str | int):
        return Outcome(label=str(output), latency_ms=latency_ms)
    if isinstance(output, dict):
        return _scores_outcome(output, latency_ms)
    return Outcome(
        latency_ms=latency_ms,
        error=f"TypeError: unsupported model output type {type(output).__name__}",
    )


def _scores_outcome(output: dict[Any, Any], latency_ms: float) -> Outcome:
    if not output:
        return Outcome(latency_ms=latency_ms, error="ValueError: empty class scores")
    scores: dict[str, float] = {}
    try:
        for k, v in output.items():
            scores[str(k)] = float(v)
    except (TypeError, ValueError) as exc:
        return Outcome(latency_ms=latency_ms, error=f"TypeError: non-numeric class score: {exc}")
    if not all(math.isfinite(s) for s in scores.values()):
        return Outcome(latency_ms=latency_ms, error="ValueError: non-finite class score")
    label = max(scores, key=scores.__getitem__)  # first of ties, in the model's order
    return Outcome(label=label, scores=scores, latency_ms=latency_ms)


def _is_river(model: Any) -> bool:
    return type(model).__module__.split(".", 1)[0] == "river"


def _is_batch_function(obj: Any) -> bool:
    """A plain function (not a class) whose one required positional argument is the batch."""
    if isinstance(obj, type) or not callable(obj):
        return False
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in positional and p.default is p.empty]
    return len(required) == 1


def sample_points(keys: Iterable[str]) -> list[float]:
    """Each request's place in [0, 1), from its id: the same request is sampled in every run,
    by every worker and every candidate (and with or without the C extension, which computes
    the same in 0.25 instead of 0.55 us a key)."""
    if _native_points is not None and type(keys) is list:
        return _native_points(keys)
    return python_sample_points(keys)


def python_sample_points(keys: Iterable[str]) -> list[float]:
    """:func:`sample_points` in Python: the reference the C one is tested against."""
    blake2b, from_bytes = hashlib.blake2b, int.from_bytes
    return [from_bytes(blake2b(k.encode(), digest_size=8).digest()) / 2.0**64 for k in keys]


# -- array models --------------------------------------------------------------------------


class _OnnxModel:
    """An onnxruntime session seen as ``predict(X)``: the first input, the first output.

    A classifier exported by skl2onnx has a second output, the class probabilities (a list
    of ``{class: p}`` maps, or an ``(n, k)`` array): it becomes ``predict_proba``.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        first = session.get_inputs()[0]
        self.input_name: str = first.name
        self.dtype = np.float64 if first.type == "tensor(double)" else np.float32
        self.n_outputs = len(session.get_outputs())

    def _run(self, X: np.ndarray) -> list[Any]:
        return list(self.session.run(None, {self.input_name: X.astype(self.dtype, copy=False)}))

    def predict(self, X: np.ndarray) -> Any:
        return self._run(X)[0]

    def rows(self, X: np.ndarray) -> list[Any]:
        outs = self._run(X)
        if self.n_outputs >= 2:
            probs = outs[1]
            if isinstance(probs, list):  # ZipMap: one {class: p} per row
                return [dict(p) for p in probs]
            arr = np.asarray(probs)
            if arr.ndim == 2 and len(arr) == len(X):
                return [dict(enumerate(map(float, row))) for row in arr]
        return _rows(outs[0], len(X))


def _rows(y: Any, n: int) -> list[Any]:
    """One output per row of a ``predict`` result (a column vector counts as a vector)."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 0 or len(arr) != n:
        raise ValueError(f"predict returned shape {arr.shape} for {n} rows")
    return list(arr)


class _ArrayScorer:
    """Scores dict requests with a ``predict(X)`` model through a declared column order."""

    def __init__(self, model: Any, features: tuple[str, ...]) -> None:
        self.model = model
        self.features = features
        proba = getattr(model, "predict_proba", None)
        self.proba: Callable[[np.ndarray], Any] | None = proba if callable(proba) else None
        classes = getattr(model, "classes_", None)
        self.classes: list[Any] | None = None if classes is None else list(classes)

    def __call__(self, xs: list[Features]) -> list[Any]:
        names = self.features
        out: list[Any] = [None] * len(xs)
        rows: list[list[float]] = []
        where: list[int] = []
        for i, x in enumerate(xs):
            try:
                rows.append([float(x[name]) for name in names])
            except KeyError as exc:
                out[i] = RowError(f"KeyError: missing feature {exc.args[0]!r}")
                continue
            except (TypeError, ValueError):
                bad = next(n for n in names if not _is_number(x[n]))
                out[i] = RowError(f"ValueError: feature {bad!r} is not a number: {x[bad]!r}")
                continue
            where.append(i)
        if not where:
            return out
        X = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
        for i, y in zip(where, self._predict(X), strict=True):
            out[i] = y
        return out

    def _predict(self, X: np.ndarray) -> list[Any]:
        if isinstance(self.model, _OnnxModel):
            return self.model.rows(X)
        if self.proba is not None:
            P = np.asarray(self.proba(X))
            if P.ndim != 2 or len(P) != len(X):
                raise ValueError(f"predict_proba returned shape {P.shape} for {len(X)} rows")
            classes = self.classes or list(range(P.shape[1]))
            keys = [c.item() if hasattr(c, "item") else c for c in classes]
            return [dict(zip(keys, row.tolist(), strict=True)) for row in P]
        return _rows(self.model.predict(X), len(X))


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _feature_order(model: Any, declared: tuple[str, ...] | None, model_id: str) -> tuple[str, ...]:
    fitted = getattr(model, "feature_names_in_", None)
    if fitted is not None:
        names = tuple(str(n) for n in fitted)
        if declared is not None and declared != names:
            raise ModelLoadError(
                f"model {model_id!r}: the spec declares features {','.join(declared)} but the "
                f"model was fitted on {','.join(names)} (leave ?features= out, or list them in "
                "that order)"
            )
        # The columns are put in the fitted order here, so scikit-learn's warning that a
        # bare array has no column names is noise; silenced for that one message only.
        warnings.filterwarnings(
            "ignore", message="X does not have valid feature names", category=UserWarning
        )
        return names
    if declared is None:
        n = getattr(model, "n_features_in_", None)
        raise ModelLoadError(
            f"model {model_id!r} ({type(model).__name__}) takes a 2-D array"
            + (f" of {n} columns" if n is not None else "")
            + " but its feature order is unknown: add ?features=a,b,c to the spec"
        )
    n = getattr(model, "n_features_in_", None)
    if n is not None and int(n) != len(declared):
        raise ModelLoadError(
            f"model {model_id!r} takes {n} features but the spec declares {len(declared)}: "
            f"{','.join(declared)}"
        )
    return declared


# -- latency -------------------------------------------------------------------------------


@dataclass
class LatencyStats:
    """What a candidate's calls cost: single calls (published) and batch calls (kept apart).

    ``batch_ms`` / ``batch_requests`` is the amortized cost per request of the vectorized
    calls: what a batch-scoring deployment would pay, reported in the worker's stats and
    log, never as a request's latency.
    """

    batch_calls: int = 0
    batch_requests: int = 0
    batch_ms: float = 0.0
    single_calls: int = 0
    single_ms: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    @property
    def amortized_ms(self) -> float | None:
        """Mean cost per request of the batch calls, ``None`` before the first one."""
        return self.batch_ms / self.batch_requests if self.batch_requests else None

    @property
    def single_mean_ms(self) -> float | None:
        return self.single_ms / self.single_calls if self.single_calls else None


@dataclass
class Candidate:
    """A loaded model under its model id, scored a micro-batch at a time.

    Latency: the primary's latency is what the service pays for one request, so every
    latency a candidate publishes estimates that too.

    - A model scored one request at a time (``predict_one``) is timed call by call: each
      request's latency is measured.
    - A vectorized model (``predict_many``, ``predict(X)``, ONNX, a batch function) is
      called once on the whole batch for the answers. Then a deterministic sample of the
      batch is scored again alone, each in a batch of one, and timed: the requests whose
      request-id hash falls below ``sample_rate`` (at least one per batch, the lowest
      hash). Those requests publish their own measured single-call latency. Every other
      request publishes a single-call latency measured earlier: the one at position
      ``hash(request_id) mod k`` among the ``k`` most recent measurements
      (:data:`LATENCY_WINDOW`, this batch's included). The published values are thus a
      resample of recent real single-call times, so their p50/p95/p99 estimate the
      single-call distribution, not just its middle. The batch call's amortized cost per
      request is kept apart in :attr:`latency`.

    If the batch call raises or returns the wrong number of outputs, the batch is scored
    again request by request, so only the requests that really fail become error outcomes
    (and every request's latency is then measured).
    """

    model_id: str
    model: Any
    features: tuple[str, ...] | None = None
    sample_rate: float = DEFAULT_SAMPLE_RATE
    latency: LatencyStats = field(init=False, repr=False, default_factory=LatencyStats)
    kind: str = field(init=False, default="")
    #: Whether the model has had its warm-up call (at load, or on the worker's first request).
    warmed: bool = field(init=False, default=False)
    _batch: Callable[[list[Features]], Sequence[Any]] | None = field(
        init=False, repr=False, default=None
    )
    _one: Callable[[Features], Any] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {self.sample_rate}")
        model = self.model
        many = getattr(model, "predict_many", None)
        one = getattr(model, "predict_one", None)
        predict = getattr(model, "predict", None)
        dict_model = callable(many) or callable(one)
        if self.features is not None and dict_model:
            raise ModelLoadError(
                f"model {self.model_id!r} ({type(model).__name__}) takes feature dicts: "
                "?features= applies only to models scored on arrays (predict(X), ONNX)"
            )
        if callable(many) and not (_is_river(model) and callable(one)):
            self._batch, self.kind = many, "predict_many"
        if callable(one):
            self._one = one
            self.kind = self.kind or "predict_one"
        if dict_model:
            return
        if isinstance(model, _OnnxModel) or callable(predict):
            self.features = _feature_order(model, self.features, self.model_id)
            self._batch = _ArrayScorer(model, self.features)
            self.kind = "onnx" if isinstance(model, _OnnxModel) else "predict"
        elif _is_batch_function(model):
            self._batch, self.kind = model, "function"
        else:
            raise ModelLoadError(
                f"model {self.model_id!r} ({type(model).__name__}) has none of "
                "predict_many(list_of_dicts), predict_one(dict), predict(X), and is not a "
                "function of one batch"
            )

    @property
    def vectorized(self) -> bool:
        """Whether micro-batches go through one batch call."""
        return self._batch is not None

    def warm_up(self, example: Features | None = None) -> bool:
        """Call the model once before traffic; :class:`ModelLoadError` when it fails.

        ``example`` defaults to a synthetic request (every declared feature 0.0); without
        one and without declared features there is nothing to call with: returns False.
        The call is neither timed nor counted. Refused: an exception, or a batch of one
        answered with another number of outputs. An output that maps to an error outcome
        (``None`` from an unlearned river classifier, a NaN) is not a refusal: the model
        runs, and such answers are published as errors like any other.
        """
        if example is None:
            if self.features is None:
                return False
            example = dict.fromkeys(self.features, 0.0)
        try:
            if self._batch is not None:
                outputs = list(self._batch([example]))
                if len(outputs) != 1:
                    raise ValueError(f"{len(outputs)} outputs for a batch of 1")
                if isinstance(outputs[0], RowError):
                    raise ValueError(outputs[0].message)
            else:
                assert self._one is not None
                self._one(example)
        except Exception as exc:
            raise ModelLoadError(
                f"model {self.model_id!r} failed its warm-up call: {_error_text(exc)}"
            ) from exc
        self.warmed = True
        return True

    def predict_batch(
        self,
        features: list[Features],
        keys: Sequence[str] | None = None,
        points: Sequence[float] | None = None,
    ) -> list[Outcome]:
        """One :class:`Outcome` per feature dict, in order; never raises for model errors.

        ``keys`` are the requests' ids, which choose the requests timed alone (see the
        class); without them, the positions do. ``points``: their :func:`sample_points`,
        when the caller has them already (one hash per request for all candidates).
        """
        if not features:
            return []
        if points is None:
            points = sample_points(keys if keys is not None else map(str, range(len(features))))
        if self._batch is not None:
            start = time.perf_counter()
            try:
                outputs: list[Any] | None = list(self._batch(features))
            except Exception:
                outputs = None
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            if outputs is not None and len(outputs) == len(features):
                stats = self.latency
                stats.batch_calls += 1
                stats.batch_requests += len(features)
                stats.batch_ms += elapsed_ms
                return self._with_single_latencies(features, points, outputs)
        if self._one is not None:
            return self._predict_each(self._one, features)
        return [self._predict_single(x) for x in features]

    def _with_single_latencies(
        self, features: list[Features], points: Sequence[float], outputs: list[Any]
    ) -> list[Outcome]:
        sampled = [i for i, p in enumerate(points) if p < self.sample_rate]
        if not sampled:
            sampled = [min(range(len(points)), key=points.__getitem__)]
        measured: dict[int, float] = {}
        for i in sampled:
            measured[i] = self._predict_single(features[i]).latency_ms
        window = list(self.latency.recent)
        k = len(window)
        latencies = [window[int(p * 2**32) % k] for p in points]
        for i, latency in measured.items():
            latencies[i] = latency
        return to_outcomes(outputs, latencies)

    def _predict_each(
        self, one: Callable[[Features], Any], features: list[Features]
    ) -> list[Outcome]:
        """:meth:`_predict_single` for every request of a ``predict_one`` model, in one loop:
        the same timing around each call, the bookkeeping once per batch (this runs once per
        request, and a method call and three attribute updates each cost as much as a small
        model's call)."""
        clock = time.perf_counter
        outputs: list[Any] = []
        latencies: list[float] = []
        for x in features:
            start = clock()
            try:
                output = one(x)
            except Exception as exc:
                latencies.append((clock() - start) * 1000.0)
                outputs.append(RowError(_error_text(exc)))  # its error outcome, below
                continue
            latencies.append((clock() - start) * 1000.0)
            outputs.append(output)
        outcomes = to_outcomes(outputs, latencies)
        stats = self.latency
        total = stats.single_ms
        for latency in latencies:  # in order, as one call at a time would add them
            total += latency
        stats.single_ms = total
        stats.single_calls += len(latencies)
        stats.recent.extend(latencies)
        return outcomes

    def _predict_single(self, x: Features) -> Outcome:
        """Timed call for one request: ``predict_one``, else a batch of one."""
        start = time.perf_counter()
        try:
            if self._one is not None:
                output = self._one(x)
            else:
                assert self._batch is not None
                outputs = list(self._batch([x]))
                if len(outputs) != 1:
                    raise ValueError(f"batch call returned {len(outputs)} outputs for 1 input")
                output = outputs[0]
        except Exception as exc:
            latency = (time.perf_counter() - start) * 1000.0
            self._measured(latency)
            return Outcome(latency_ms=latency, error=_error_text(exc))
        latency = (time.perf_counter() - start) * 1000.0
        self._measured(latency)
        return to_outcome(output, latency)

    def _measured(self, latency_ms: float) -> None:
        stats = self.latency
        stats.single_calls += 1
        stats.single_ms += latency_ms
        stats.recent.append(latency_ms)


@dataclass(frozen=True)
class Spec:
    """A parsed candidate spec: ``model_id``, where to load from, and which attribute."""

    model_id: str
    target: str  # a module name, a .py path or a model file's path
    attr: str  # empty for model files
    kind: str  # "module" | "file" | "pickle" | "joblib" | "onnx"
    features: tuple[str, ...] | None = None  # ?features=a,b,c


def _normalize_id(model_id: str, spec: str) -> str:
    if not model_id or any(c.isspace() for c in model_id) or model_id.count("@") > 1:
        raise ModelLoadError(
            f"bad model id {model_id!r} in spec {spec!r}: expected name@version, without spaces"
        )
    name, at, version = model_id.partition("@")
    if not name or (at and not version):
        raise ModelLoadError(f"bad model id {model_id!r} in spec {spec!r}: expected name@version")
    return model_id if "@" in model_id else f"{model_id}@1"


def parse_spec(spec: str) -> Spec:
    """Parse ``ID=target[?features=a,b,c]`` (see the module docstring) without importing."""
    usage = (
        "expected ID=package.module:attr, ID=path/to/file.py:attr or ID=path/to/model.joblib "
        "(or .pkl, .onnx), optionally followed by ?features=a,b,c (ID like name@version)"
    )
    text = spec.strip()
    if not text:
        raise ModelLoadError(f"empty candidate spec: {usage}")
    model_id, eq, rest = text.partition("=")
    if not eq or "?" in model_id:
        model_id, rest = "", text
    rest, _, query = rest.strip().partition("?")
    features = _parse_query(query, spec) if query or text.endswith("?") else None
    rest = rest.strip()
    if rest.endswith(_FILE_MODEL_SUFFIXES):
        default_id = Path(rest).stem
        kind = (
            "joblib"
            if rest.endswith(_JOBLIB_SUFFIXES)
            else "onnx"
            if rest.endswith(_ONNX_SUFFIXES)
            else "pickle"
        )
        return Spec(_normalize_id(model_id.strip() or default_id, spec), rest, "", kind, features)
    target, colon, attr = rest.rpartition(":")
    if not colon or not target or not attr:
        raise ModelLoadError(f"bad candidate spec {spec!r}: {usage}")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise ModelLoadError(f"bad attribute {attr!r} in candidate spec {spec!r}: {usage}")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if not is_file and not all(part.isidentifier() for part in target.split(".")):
        raise ModelLoadError(f"bad module name {target!r} in candidate spec {spec!r}: {usage}")
    model_id = _normalize_id(model_id.strip() or attr.rsplit(".", 1)[-1], spec)
    return Spec(model_id, target, attr, "file" if is_file else "module", features)


def _parse_query(query: str, spec: str) -> tuple[str, ...]:
    key, eq, value = query.partition("=")
    if key.strip() != "features" or not eq:
        raise ModelLoadError(
            f"bad option {query!r} in candidate spec {spec!r}: the only one is ?features=a,b,c"
        )
    names = tuple(n.strip() for n in value.split(","))
    if not names or any(not n for n in names):
        raise ModelLoadError(f"empty feature name in {query!r} of candidate spec {spec!r}")
    if len(set(names)) != len(names):
        raise ModelLoadError(f"a feature is listed twice in {query!r} of candidate spec {spec!r}")
    return names


def _import_module(name: str, spec: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise ModelLoadError(
                f"module {name!r} not found for candidate spec {spec!r} (is it installed, "
                "or on PYTHONPATH?)"
            ) from exc
        raise ModelLoadError(
            f"importing {name!r} for candidate spec {spec!r} failed: it needs the missing "
            f"module {missing!r}"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"importing {name!r} for candidate spec {spec!r} raised {_error_text(exc)}"
        ) from exc


def _import_file(path_text: str, spec: str) -> Any:
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ModelLoadError(f"model file {path_text!r} not found for candidate spec {spec!r}")
    # A private, path-derived module name: two files named model.py must not collide, and
    # registering it in sys.modules lets pickle and dataclasses find the module again.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    mod_name = f"_understudy_candidate_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    file_spec = importlib.util.spec_from_file_location(mod_name, path)
    if file_spec is None or file_spec.loader is None:
        raise ModelLoadError(f"cannot import {path_text!r} as Python for candidate spec {spec!r}")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[mod_name] = module
    try:
        file_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[mod_name]
        raise ModelLoadError(
            f"executing {path_text!r} for candidate spec {spec!r} raised {_error_text(exc)}"
        ) from exc
    return module


def _load_pickle(path_text: str, spec: str) -> Any:
    path = Path(path_text).expanduser()
    try:
        with path.open("rb") as fh:
            return pickle.load(fh)
    except FileNotFoundError as exc:
        raise ModelLoadError(
            f"model file {path_text!r} not found for candidate spec {spec!r}"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"cannot unpickle {path_text!r} for candidate spec {spec!r}: {_error_text(exc)}"
        ) from exc


def _optional_module(name: str, spec: str, what: str, install: str) -> Any:
    """An optional dependency a model file needs, or a load error that says how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ModelLoadError(
            f"candidate spec {spec!r} names {what}, but {name} is not installed ({install})"
        ) from exc


def _model_file(path_text: str, spec: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"model file {path_text!r} not found for candidate spec {spec!r}")
    return path


def _load_joblib(path_text: str, spec: str) -> Any:
    joblib = _optional_module(
        "joblib", spec, "a joblib file", "pip install joblib; scikit-learn brings it"
    )
    path = _model_file(path_text, spec)
    try:
        return joblib.load(path)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load joblib file {path_text!r} for candidate spec {spec!r}: {_error_text(exc)}"
        ) from exc


def _load_onnx(path_text: str, spec: str) -> Any:
    onnxruntime = _optional_module("onnxruntime", spec, "an ONNX model", "pip install onnxruntime")
    path = _model_file(path_text, spec)
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(
            f"onnxruntime cannot load {path_text!r} for candidate spec {spec!r}: {_error_text(exc)}"
        ) from exc
    return _OnnxModel(session)


def _has_predict(obj: Any) -> bool:
    return isinstance(obj, _OnnxModel) or any(
        callable(getattr(obj, name, None)) for name in ("predict_many", "predict_one", "predict")
    )


def _resolve(module: Any, attr: str, where: str, spec: str) -> Any:
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ModelLoadError(
                f"{where} has no attribute {attr!r} (candidate spec {spec!r})"
            ) from exc
    # A class is a factory even though it has predict methods (unbound ones); a function of
    # one argument is a batch model, of none a factory.
    if isinstance(obj, type) or (
        callable(obj) and not _has_predict(obj) and not _is_batch_function(obj)
    ):
        try:
            obj = obj()
        except Exception as exc:
            raise ModelLoadError(
                f"factory {attr!r} in {where} must be callable with no arguments and return a "
                f"model, but calling it raised {_error_text(exc)} (candidate spec {spec!r})"
            ) from exc
    return obj


def load_candidate(
    spec: str,
    *,
    sample_rate: float = DEFAULT_SAMPLE_RATE,
    warm_up: bool = True,
    example: Features | None = None,
) -> Candidate:
    """Import, build, check and warm up the model a spec names; :class:`ModelLoadError`
    otherwise.

    Loading happens once, at worker start, so that a typo, a missing dependency or a model
    that cannot answer fails fast with a message that says what to fix instead of turning
    into a stream of error predictions. ``warm_up``: call the model once, on ``example``
    (a request's features, as the operator gives them: ``--warm-up-request``) or else on a
    synthetic request when its features are declared (see :meth:`Candidate.warm_up`).
    """
    parsed = parse_spec(spec)
    if parsed.kind == "pickle":
        model, where = _load_pickle(parsed.target, spec), f"pickle {parsed.target!r}"
    elif parsed.kind == "joblib":
        model, where = _load_joblib(parsed.target, spec), f"joblib file {parsed.target!r}"
    elif parsed.kind == "onnx":
        model, where = _load_onnx(parsed.target, spec), f"ONNX file {parsed.target!r}"
    elif parsed.kind == "file":
        module = _import_file(parsed.target, spec)
        where = f"file {parsed.target!r}"
        model = _resolve(module, parsed.attr, where, spec)
    else:
        module = _import_module(parsed.target, spec)
        where = f"module {parsed.target!r}"
        model = _resolve(module, parsed.attr, where, spec)
    if not _has_predict(model) and not _is_batch_function(model):
        raise ModelLoadError(
            f"{parsed.attr or 'the object'} from {where} is a {type(model).__name__}, which "
            "has none of predict_many(list_of_dicts), predict_one(dict), predict(X), and is "
            f"not a function of one batch (candidate spec {spec!r})"
        )
    try:
        candidate = Candidate(parsed.model_id, model, parsed.features, sample_rate)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc} (candidate spec {spec!r})") from exc
    if warm_up:
        candidate.warm_up(example)
    return candidate
