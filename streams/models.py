"""Candidate models: loading them from a spec, and scoring micro-batches uniformly.

A shadow worker must run *any* model a team hands it, without knowing its library, and
must never crash because of it. So a model is anything with one of two tiny methods:

- ``predict_many(list_of_feature_dicts) -> sequence`` (vectorized, preferred), or
- ``predict_one(feature_dict) -> output`` (river's protocol).

and :meth:`Candidate.predict_batch` turns what it returns into one :class:`Outcome` per
request: a regression value, a class label, class scores, the latency, or an error. A model
exception, a NaN, an infinity or an output of an unsupported type becomes an *error
outcome* for that request, never an exception into the worker (errors are data).

Output mapping (``bool`` is checked before ``int``, numpy scalars are unwrapped first):

==========================  =============================================================
model output                outcome
==========================  =============================================================
``float`` (finite)          ``value``: a regression output
``str``, ``int``, ``bool``  ``label`` = ``str(output)`` (so ``True`` -> ``"True"``)
``dict[label, float]``      ``scores`` (keys as ``str``), ``label`` = the arg-max key
``None``                    error: a river classifier answers ``None`` before it has
                            learned anything
anything else, NaN, inf     error
==========================  =============================================================

Specs (``ID=target``), as given to ``understudy worker --candidate``:

- ``price-ridge@4=package.module:attr`` an importable module and an attribute (dotted
  paths such as ``module:holder.model`` work);
- ``price-tree@1=path/to/file.py:attr`` a Python file, imported under a private name;
- ``price-river@2=path/to/model.pkl`` a pickled model (``.pkl`` or ``.pickle``). Pickle
  runs code while loading: only load files the operator trusts.

``attr`` is a model object, or a class or zero-argument factory whose call returns one. The
``ID`` is the model id published with every prediction, conventionally ``name@version``;
an id without ``@`` gets ``@1`` so that every id has a version. ``ID=`` may be left out: the
attribute's name (or the pickle file's stem) then becomes the name.

A river model works as a candidate through ``predict_one`` (its ``predict_many`` expects a
pandas DataFrame, so it is not used). Learning from the ``labels`` topic while shadowing
(predict, then learn) is a later step of the worker; here the model only predicts.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from streams.errors import ModelLoadError

__all__ = [
    "BatchModel",
    "Candidate",
    "OnlineModel",
    "Outcome",
    "load_candidate",
    "parse_spec",
    "to_outcome",
]

#: Error messages are cut to this many characters: a model that raises with a megabyte of
#: text must not turn every prediction event into a megabyte.
MAX_ERROR_CHARS = 500

_PICKLE_SUFFIXES = (".pkl", ".pickle")

Features = dict[str, Any]


@runtime_checkable
class BatchModel(Protocol):
    """A model scored a micro-batch at a time (numpy, a compiled runtime, a remote call)."""

    def predict_many(self, xs: list[Features], /) -> Sequence[Any]: ...


@runtime_checkable
class OnlineModel(Protocol):
    """A model scored one request at a time: river's protocol."""

    def predict_one(self, x: Features, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """One model's answer to one request, ready to become a Prediction event.

    Exactly one of ``value`` (regression), ``label`` (classification, with optional
    ``scores``) or ``error`` is set. ``latency_ms`` is set on errors too: a model that
    takes two seconds to fail is slow as well as wrong.
    """

    value: float | None = None
    label: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def to_outcome(output: Any, latency_ms: float) -> Outcome:
    """Map one raw model output to an :class:`Outcome` (see the module's table); never raises."""
    try:
        return _to_outcome(output, latency_ms)
    except Exception as exc:  # an output object whose .item() or __str__ raises
        return Outcome(latency_ms=latency_ms, error=_error_text(exc))


def _to_outcome(output: Any, latency_ms: float) -> Outcome:
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


@dataclass
class Candidate:
    """A loaded model under its model id, scored a micro-batch at a time.

    The vectorized ``predict_many`` is used when the model has one (except for river
    models, whose ``predict_many`` wants a DataFrame). Its elapsed time is split evenly:
    each request of the batch gets ``latency_ms = elapsed / n``, the model's amortized cost
    per request, which is what a batch-scoring deployment would pay. It is *not* a
    per-request tail latency; models scored with ``predict_one`` are timed one by one and
    do have a real distribution.

    If the batch call raises or returns the wrong number of outputs, the batch is scored
    again request by request, so only the requests that really fail become error outcomes.
    """

    model_id: str
    model: Any
    _batch: Callable[[list[Features]], Sequence[Any]] | None = field(
        init=False, repr=False, default=None
    )
    _one: Callable[[Features], Any] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        many = getattr(self.model, "predict_many", None)
        one = getattr(self.model, "predict_one", None)
        if callable(many) and not (_is_river(self.model) and callable(one)):
            self._batch = many
        if callable(one):
            self._one = one
        if self._batch is None and self._one is None:
            raise ModelLoadError(
                f"model {self.model_id!r} ({type(self.model).__name__}) has neither "
                "predict_many(list_of_dicts) nor predict_one(dict)"
            )

    @property
    def vectorized(self) -> bool:
        """Whether micro-batches go through one ``predict_many`` call."""
        return self._batch is not None

    def predict_batch(self, features: list[Features]) -> list[Outcome]:
        """One :class:`Outcome` per feature dict, in order; never raises for model errors."""
        if not features:
            return []
        if self._batch is not None:
            start = time.perf_counter()
            try:
                outputs: list[Any] | None = list(self._batch(features))
            except Exception:
                outputs = None
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            if outputs is not None and len(outputs) == len(features):
                per_request = elapsed_ms / len(features)
                return [to_outcome(out, per_request) for out in outputs]
        return [self._predict_single(x) for x in features]

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
                    raise ValueError(f"predict_many returned {len(outputs)} outputs for 1 input")
                output = outputs[0]
        except Exception as exc:
            latency = (time.perf_counter() - start) * 1000.0
            return Outcome(latency_ms=latency, error=_error_text(exc))
        return to_outcome(output, (time.perf_counter() - start) * 1000.0)


@dataclass(frozen=True)
class Spec:
    """A parsed candidate spec: ``model_id``, where to load from, and which attribute."""

    model_id: str
    target: str  # a module name, a .py path or a pickle path
    attr: str  # empty for pickles
    kind: str  # "module" | "file" | "pickle"


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
    """Parse ``ID=target[:attr]`` (see the module docstring) without importing anything."""
    usage = (
        "expected ID=package.module:attr, ID=path/to/file.py:attr or ID=path/to/model.pkl "
        "(ID like name@version)"
    )
    text = spec.strip()
    if not text:
        raise ModelLoadError(f"empty candidate spec: {usage}")
    model_id, eq, rest = text.partition("=")
    if not eq:
        model_id, rest = "", text
    rest = rest.strip()
    if rest.endswith(_PICKLE_SUFFIXES):
        default_id = Path(rest).stem
        return Spec(_normalize_id(model_id.strip() or default_id, spec), rest, "", "pickle")
    target, colon, attr = rest.rpartition(":")
    if not colon or not target or not attr:
        raise ModelLoadError(f"bad candidate spec {spec!r}: {usage}")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise ModelLoadError(f"bad attribute {attr!r} in candidate spec {spec!r}: {usage}")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if not is_file and not all(part.isidentifier() for part in target.split(".")):
        raise ModelLoadError(f"bad module name {target!r} in candidate spec {spec!r}: {usage}")
    model_id = _normalize_id(model_id.strip() or attr.rsplit(".", 1)[-1], spec)
    return Spec(model_id, target, attr, "file" if is_file else "module")


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


def _has_predict(obj: Any) -> bool:
    return callable(getattr(obj, "predict_many", None)) or callable(
        getattr(obj, "predict_one", None)
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
    # A class is a factory even though it has predict methods (unbound ones).
    if isinstance(obj, type) or (callable(obj) and not _has_predict(obj)):
        try:
            obj = obj()
        except Exception as exc:
            raise ModelLoadError(
                f"factory {attr!r} in {where} must be callable with no arguments and return a "
                f"model, but calling it raised {_error_text(exc)} (candidate spec {spec!r})"
            ) from exc
    return obj


def load_candidate(spec: str) -> Candidate:
    """Import, build and check the model a spec names; :class:`ModelLoadError` otherwise.

    Loading happens once, at worker start, so that a typo fails fast with a message that
    says what to fix instead of turning into a stream of error predictions.
    """
    parsed = parse_spec(spec)
    if parsed.kind == "pickle":
        model, where = _load_pickle(parsed.target, spec), f"pickle {parsed.target!r}"
    elif parsed.kind == "file":
        module = _import_file(parsed.target, spec)
        where = f"file {parsed.target!r}"
        model = _resolve(module, parsed.attr, where, spec)
    else:
        module = _import_module(parsed.target, spec)
        where = f"module {parsed.target!r}"
        model = _resolve(module, parsed.attr, where, spec)
    if not _has_predict(model):
        raise ModelLoadError(
            f"{parsed.attr or 'the object'} from {where} is a {type(model).__name__}, which "
            "has neither predict_many(list_of_dicts) nor predict_one(dict) "
            f"(candidate spec {spec!r})"
        )
    return Candidate(parsed.model_id, model)
