"""Candidate loading and the uniform batch interface (no broker)."""

from __future__ import annotations

import math
import pickle
import random
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.errors import ModelLoadError
from streams.models import Candidate, Outcome, load_candidate, parse_spec, to_outcome

# -- models used through specs of this module (``tests.unit.test_models:...`` is not
# importable as a package path, so specs below point at files or at streams.demo_models).


class Doubler:
    """Vectorized: counts its calls so tests can see the batch path was taken."""

    def __init__(self) -> None:
        self.batch_calls = 0

    def predict_many(self, xs: list[dict[str, Any]]) -> list[float]:
        self.batch_calls += 1
        return [2.0 * x["a"] for x in xs]


class FailsOnNegative:
    """Vectorized model whose batch call fails when any input is negative."""

    def __init__(self) -> None:
        self.batch_calls = 0

    def predict_many(self, xs: list[dict[str, Any]]) -> list[float]:
        self.batch_calls += 1
        if any(x["a"] < 0 for x in xs):
            raise ValueError("negative input")
        return [float(x["a"]) for x in xs]


class OnlineEcho:
    def predict_one(self, x: dict[str, Any]) -> Any:
        return x["out"]


# -- spec parsing --------------------------------------------------------------------------


def test_parse_module_spec() -> None:
    spec = parse_spec("price-ridge@4=streams.demo_models:ridge_candidate")
    assert (spec.model_id, spec.target, spec.attr, spec.kind) == (
        "price-ridge@4",
        "streams.demo_models",
        "ridge_candidate",
        "module",
    )


def test_parse_adds_version_and_defaults_id() -> None:
    assert parse_spec("ridge=streams.demo_models:ridge_candidate").model_id == "ridge@1"
    assert parse_spec("streams.demo_models:ridge_candidate").model_id == "ridge_candidate@1"
    assert parse_spec("m=mod:holder.model").attr == "holder.model"


def test_parse_file_and_pickle_specs() -> None:
    assert parse_spec("m@2=models/tree.py:model").kind == "file"
    assert parse_spec("m@2=./tree.py:model").target == "./tree.py"
    pkl = parse_spec("dir/river-lr.pkl")
    assert (pkl.kind, pkl.model_id, pkl.attr) == ("pickle", "river-lr@1", "")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "empty candidate spec"),
        ("m@1=streams.demo_models", "bad candidate spec"),
        ("m@1=streams.demo_models:", "bad candidate spec"),
        ("m@1=:attr", "bad candidate spec"),
        ("m@1=streams.demo models:x", "bad module name"),
        ("m@1=streams.demo_models:not-an-ident", "bad attribute"),
        ("m @1=streams.demo_models:primary", "bad model id"),
        ("@1=streams.demo_models:primary", "bad model id"),
        ("m@=streams.demo_models:primary", "bad model id"),
        ("a@b@c=streams.demo_models:primary", "bad model id"),
    ],
)
def test_parse_errors(spec: str, fragment: str) -> None:
    with pytest.raises(ModelLoadError, match=fragment):
        parse_spec(spec)


# -- loading -------------------------------------------------------------------------------


def test_load_module_object() -> None:
    cand = load_candidate("price-ridge@4=streams.demo_models:ridge_candidate")
    assert cand.model_id == "price-ridge@4"
    assert cand.vectorized


def test_load_errors_are_clear() -> None:
    with pytest.raises(ModelLoadError, match=r"module 'no_such_pkg\.mod' not found"):
        load_candidate("m@1=no_such_pkg.mod:model")
    with pytest.raises(ModelLoadError, match="has no attribute 'missing'"):
        load_candidate("m@1=streams.demo_models:missing")
    with pytest.raises(ModelLoadError, match="none of predict_many"):
        load_candidate("m@1=streams.demo_models:PRIMARY_ID")


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


def test_load_file_object_class_and_factory(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mymodels.py",
        """
        class Half:
            def predict_one(self, x):
                return x["a"] / 2

        half = Half()

        def make_half():
            return Half()
        """,
    )
    for attr in ("half", "Half", "make_half"):
        cand = load_candidate(f"half@7={path}:{attr}")
        assert cand.model_id == "half@7"
        assert cand.predict_batch([{"a": 3.0}])[0].value == 1.5
        assert not cand.vectorized


def test_load_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_candidate(f"m@1={tmp_path / 'absent.py'}:model")
    bad = write(tmp_path / "boom.py", "raise RuntimeError('cannot init')\n")
    with pytest.raises(ModelLoadError, match="RuntimeError: cannot init"):
        load_candidate(f"m@1={bad}:model")
    dep = write(tmp_path / "dep.py", "import no_such_dependency_xyz\n")
    with pytest.raises(ModelLoadError, match="no_such_dependency_xyz"):
        load_candidate(f"m@1={dep}:model")
    factory = write(
        tmp_path / "factory.py",
        """
        def needs_args(a, b):
            return None

        def broken():
            raise OSError("weights missing")

        def returns_nothing_useful():
            return 42
        """,
    )
    with pytest.raises(ModelLoadError, match="no arguments"):
        load_candidate(f"m@1={factory}:needs_args")
    with pytest.raises(ModelLoadError, match="OSError: weights missing"):
        load_candidate(f"m@1={factory}:broken")
    with pytest.raises(ModelLoadError, match="is a int, which has none of"):
        load_candidate(f"m@1={factory}:returns_nothing_useful")


def test_load_pickle(tmp_path: Path) -> None:
    from river import linear_model

    model = linear_model.LinearRegression()
    for i in range(20):
        model.learn_one({"a": float(i)}, 3.0 * i)
    path = tmp_path / "lr.pkl"
    path.write_bytes(pickle.dumps(model))
    cand = load_candidate(f"river-lr@2={path}")
    assert cand.model_id == "river-lr@2"
    assert cand.predict_batch([{"a": 2.0}])[0].value == pytest.approx(model.predict_one({"a": 2.0}))
    with pytest.raises(ModelLoadError, match="not found"):
        load_candidate(f"{tmp_path / 'absent.pkl'}")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match="cannot unpickle"):
        load_candidate(f"{tmp_path / 'junk.pkl'}")


def test_module_import_error_inside_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "badpkg_for_test.py", "import no_such_dependency_abc\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(
            ModelLoadError, match="needs the missing module 'no_such_dependency_abc'"
        ):
            load_candidate("m@1=badpkg_for_test:model")
    finally:
        sys.modules.pop("badpkg_for_test", None)


# -- scoring -------------------------------------------------------------------------------


def test_vectorized_latency_is_a_single_call_estimate() -> None:
    model = Doubler()
    cand = Candidate("d@1", model, sample_rate=0.0)
    outs = cand.predict_batch([{"a": 1.0}, {"a": 2.5}, {"a": -1.0}], ["r1", "r2", "r3"])
    assert [o.value for o in outs] == [2.0, 5.0, -2.0]
    # one batch call, then one single call: the lowest hash when none falls in the sample
    assert model.batch_calls == 2
    assert cand.latency.batch_calls == 1 and cand.latency.batch_requests == 3
    assert cand.latency.single_calls == 1
    (measured,) = cand.latency.recent
    assert all(o.ok and o.latency_ms == measured for o in outs)


def test_empty_batch() -> None:
    assert Candidate("d@1", Doubler()).predict_batch([]) == []


def test_batch_exception_falls_back_to_single_requests() -> None:
    model = FailsOnNegative()
    outs = Candidate("f@1", model).predict_batch([{"a": 1.0}, {"a": -2.0}, {"a": 3.0}])
    assert model.batch_calls == 4  # the batch, then one batch of one per request
    assert [o.value for o in outs] == [1.0, None, 3.0]
    assert outs[1].error == "ValueError: negative input"
    assert outs[1].value is None and outs[1].label is None
    assert outs[0].ok and outs[2].ok


def test_wrong_output_count_falls_back() -> None:
    class Short:
        def predict_many(self, xs: list[dict[str, Any]]) -> list[float]:
            return [1.0] * max(1, len(xs) - 1)

    outs = Candidate("s@1", Short()).predict_batch([{}, {}])
    assert [o.value for o in outs] == [1.0, 1.0]


def test_online_model_exceptions_become_error_outcomes() -> None:
    class Picky:
        def predict_one(self, x: dict[str, Any]) -> float:
            if x["a"] == 0:
                raise ZeroDivisionError("division by zero")
            return 1.0 / x["a"]

    outs = Candidate("p@1", Picky()).predict_batch([{"a": 2.0}, {"a": 0}])
    assert outs[0].value == 0.5
    assert outs[1].error == "ZeroDivisionError: division by zero"
    assert outs[1].latency_ms >= 0.0


def test_long_error_messages_are_cut() -> None:
    class Verbose:
        def predict_one(self, x: dict[str, Any]) -> float:
            raise RuntimeError("x" * 10_000)

    (out,) = Candidate("v@1", Verbose()).predict_batch([{}])
    assert out.error is not None and len(out.error) == 500 and out.error.endswith("...")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float64("nan")])
def test_non_finite_outputs_are_errors(bad: float) -> None:
    (out,) = Candidate("n@1", OnlineEcho()).predict_batch([{"out": bad}])
    assert out.error is not None and "non-finite" in out.error
    assert out.value is None


def test_nan_in_vectorized_output_only_fails_that_request() -> None:
    class SomeNaN:
        def predict_many(self, xs: list[dict[str, Any]]) -> np.ndarray:
            return np.array([x["a"] for x in xs], dtype=np.float64)

    outs = Candidate("n@1", SomeNaN()).predict_batch([{"a": 1.0}, {"a": math.nan}])
    assert outs[0].value == 1.0 and outs[0].ok
    assert outs[1].error is not None and "non-finite" in outs[1].error


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (1.5, Outcome(value=1.5)),
        (np.float32(0.5), Outcome(value=0.5)),
        ("spam", Outcome(label="spam")),
        (3, Outcome(label="3")),
        (np.int64(2), Outcome(label="2")),
        (True, Outcome(label="True")),
        (np.bool_(False), Outcome(label="False")),
        ({"a": 0.2, "b": 0.8}, Outcome(label="b", scores={"a": 0.2, "b": 0.8})),
        ({1: 0.7, 0: 0.3}, Outcome(label="1", scores={"1": 0.7, "0": 0.3})),
    ],
)
def test_output_type_mapping(output: Any, expected: Outcome) -> None:
    assert to_outcome(output, 0.0) == expected


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        (None, "returned None"),
        ([1.0, 2.0], "unsupported model output type list"),
        (b"bytes", "unsupported model output type bytes"),
        ({}, "empty class scores"),
        ({"a": "high"}, "non-numeric class score"),
        ({"a": math.nan}, "non-finite class score"),
    ],
)
def test_unsupported_outputs_are_errors(output: Any, fragment: str) -> None:
    out = to_outcome(output, 1.0)
    assert out.error is not None and fragment in out.error
    assert out.latency_ms == 1.0


def test_model_without_predict_methods_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="none of predict_many"):
        Candidate("x@1", object())


def test_river_model_as_candidate() -> None:
    from river import linear_model, preprocessing

    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    lr = linear_model.LinearRegression()
    for i in range(50):
        x = {"a": float(i % 10), "b": float(i % 3)}
        y = 2.0 * x["a"] - x["b"] + 1.0
        model.learn_one(x, y)
        lr.learn_one(x, y)
    for m in (model, lr):
        cand = Candidate("river@1", m)
        assert not cand.vectorized  # river's predict_many wants a DataFrame
        xs = [{"a": 1.0, "b": 2.0}, {"a": 4.0, "b": 0.0}]
        outs = cand.predict_batch(xs)
        assert [o.value for o in outs] == [pytest.approx(m.predict_one(x)) for x in xs]
        assert all(o.ok for o in outs)


def test_river_classifier_scores_and_unlearned_none() -> None:
    from river import linear_model

    clf = linear_model.LogisticRegression()
    (out,) = Candidate("clf@1", clf).predict_batch([{"a": 1.0}])
    assert out.ok and out.label in {"True", "False"}  # river answers False before learning

    class ProbaOnly:
        def __init__(self) -> None:
            self.clf = clf

        def predict_one(self, x: dict[str, Any]) -> dict[Any, float]:
            return self.clf.predict_proba_one(x)

    for i in range(30):
        clf.learn_one({"a": float(i)}, i > 15)
    (out,) = Candidate("clf@2", ProbaOnly()).predict_batch([{"a": 29.0}])
    assert out.label == "True"
    assert sum(out.scores.values()) == pytest.approx(1.0)


def test_output_objects_that_raise_become_errors() -> None:
    class Weird:
        shape = ()

        def item(self) -> float:
            raise RuntimeError("cannot unwrap")

    assert to_outcome(Weird(), 0.5) == Outcome(latency_ms=0.5, error="RuntimeError: cannot unwrap")


# -- array models (scikit-learn, ONNX), batch functions, warm-up -----------------------------


def rows_of(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"a": float(rng.normal()), "b": float(rng.normal()), "c": "x"} for _ in range(n)]


def fitted_regressor() -> Any:
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 2))
    return LinearRegression().fit(X, 3.0 * X[:, 0] - 2.0 * X[:, 1] + 0.5)


def test_parse_features_option() -> None:
    spec = parse_spec("gbr@3=models/gbr.joblib?features=b, a")
    assert (spec.kind, spec.model_id, spec.features) == ("joblib", "gbr@3", ("b", "a"))
    assert parse_spec("m.onnx?features=x").kind == "onnx"
    assert parse_spec("m=mod:attr?features=a,b").features == ("a", "b")
    assert parse_spec("m=mod:attr").features is None
    for bad, fragment in [
        ("m=mod:attr?feature=a", "the only one is"),
        ("m=mod:attr?features=a,,b", "empty feature name"),
        ("m=mod:attr?features=a,a", "listed twice"),
    ]:
        with pytest.raises(ModelLoadError, match=fragment):
            parse_spec(bad)


def test_sklearn_joblib_predictions_equal_model_predict(tmp_path: Path) -> None:
    import joblib

    model = fitted_regressor()
    path = tmp_path / "ridge.joblib"
    joblib.dump(model, path)
    # declared order b, a: the spec's order is the column order the model was fitted on
    cand = load_candidate(f"lin@2={path}?features=b,a")
    assert (cand.model_id, cand.kind, cand.features) == ("lin@2", "predict", ("b", "a"))
    xs = rows_of(50)
    outs = cand.predict_batch(xs, [f"r{i}" for i in range(50)])
    X = np.array([[x["b"], x["a"]] for x in xs])
    assert [o.value for o in outs] == model.predict(X).tolist()
    assert all(o.ok and o.latency_ms > 0 for o in outs)


def test_feature_order_from_feature_names_in(tmp_path: Path) -> None:
    import joblib
    import pyarrow as pa
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(2)
    X = rng.normal(size=(100, 3))
    table = pa.table({"c": X[:, 0], "a": X[:, 1], "b": X[:, 2]})
    model = LinearRegression().fit(table, X @ np.array([1.0, 2.0, -4.0]))
    assert list(model.feature_names_in_) == ["c", "a", "b"]
    path = tmp_path / "named.joblib"
    joblib.dump(model, path)
    cand = load_candidate(f"named@1={path}")
    assert cand.features == ("c", "a", "b")
    xs = [{"a": 1.0, "b": 2.0, "c": 3.0}, {"b": -1.0, "c": 0.5, "a": 0.0}]
    expected = model.predict(pa.table({k: [x[k] for x in xs] for k in "cab"}))
    assert [o.value for o in cand.predict_batch(xs)] == expected.tolist()
    assert load_candidate(f"named@1={path}?features=c,a,b").features == ("c", "a", "b")
    with pytest.raises(ModelLoadError, match="fitted on c,a,b"):
        load_candidate(f"named@1={path}?features=a,b,c")


def test_missing_or_non_numeric_feature_fails_that_row_only() -> None:
    model = fitted_regressor()
    cand = Candidate("lin@1", model, ("a", "b"))
    xs = [{"a": 1.0, "b": 2.0}, {"a": 1.0}, {"a": "high", "b": 0.0}, {"a": 0.0, "b": None}]
    xs.append({"a": -1.0, "b": 1.0})
    outs = cand.predict_batch(xs)
    assert outs[1].error == "KeyError: missing feature 'b'"
    assert outs[2].error == "ValueError: feature 'a' is not a number: 'high'"
    assert outs[3].error == "ValueError: feature 'b' is not a number: None"
    good = np.array([[1.0, 2.0], [-1.0, 1.0]])
    assert [outs[0].value, outs[4].value] == model.predict(good).tolist()
    # a batch where no row can be scored never calls the model
    assert [o.error for o in cand.predict_batch([{}])] == ["KeyError: missing feature 'a'"]


def test_predict_proba_gives_scores_and_argmax_label() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 2))
    y = np.where(X[:, 0] + X[:, 1] > 0.5, "up", np.where(X[:, 0] < -0.5, "down", "flat"))
    model = LogisticRegression().fit(X, y)
    cand = Candidate("clf@1", model, ("a", "b"))
    xs = rows_of(40, seed=4)
    outs = cand.predict_batch(xs)
    Xq = np.array([[x["a"], x["b"]] for x in xs])
    proba = model.predict_proba(Xq)
    for out, p, label in zip(outs, proba, model.predict(Xq), strict=True):
        assert out.scores == dict(zip(model.classes_.tolist(), p.tolist(), strict=True))
        assert out.label == label == model.classes_[int(np.argmax(p))]
        assert out.value is None


def test_batch_function(tmp_path: Path) -> None:
    path = write(
        tmp_path / "fn.py",
        """
        calls = []

        def score(batch):
            calls.append(len(batch))
            return [x["a"] + 1.0 for x in batch]
        """,
    )
    cand = load_candidate(f"fn@1={path}:score")
    assert cand.kind == "function" and cand.vectorized
    outs = cand.predict_batch([{"a": 1.0}, {"a": 2.0}])
    assert [o.value for o in outs] == [2.0, 3.0]


def test_bad_model_files_are_load_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.joblib").write_bytes(b"not a joblib file")
    with pytest.raises(ModelLoadError, match="cannot load joblib file"):
        load_candidate(f"m@1={tmp_path / 'junk.joblib'}?features=a")
    with pytest.raises(ModelLoadError, match="not found"):
        load_candidate(f"m@1={tmp_path / 'absent.joblib'}")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load"):
        load_candidate(f"m@1={tmp_path / 'junk.onnx'}?features=a")
    import joblib

    joblib.dump(fitted_regressor(), tmp_path / "lin.joblib")
    with pytest.raises(ModelLoadError, match=r"feature order is unknown: add \?features="):
        load_candidate(f"m@1={tmp_path / 'lin.joblib'}")
    with pytest.raises(ModelLoadError, match="takes 2 features but the spec declares 3"):
        load_candidate(f"m@1={tmp_path / 'lin.joblib'}?features=a,b,c")
    with pytest.raises(ModelLoadError, match="applies only to models scored on arrays"):
        load_candidate("m@1=streams.demo_models:ridge_candidate?features=sqft")


def test_warm_up_failure_refuses_the_model(tmp_path: Path) -> None:
    path = write(
        tmp_path / "broken.py",
        """
        class NeedsGPU:
            def predict(self, X):
                raise RuntimeError("CUDA device not found")

        model = NeedsGPU()

        class Fine:
            def predict(self, X):
                return X[:, 0]

        fine = Fine()
        """,
    )
    with pytest.raises(ModelLoadError, match="failed its warm-up call: RuntimeError: CUDA device"):
        load_candidate(f"gpu@1={path}:model?features=a")
    cand = load_candidate(f"gpu@1={path}:model?features=a", warm_up=False)
    assert cand.kind == "predict"
    assert (
        load_candidate(f"fine@1={path}:fine?features=a").predict_batch([{"a": 2.0}])[0].value == 2.0
    )
    # a dict model has no declared features: nothing to warm it with until a request comes
    ridge = load_candidate("m@1=streams.demo_models:ridge_candidate")
    assert not ridge.warm_up()
    with pytest.raises(ModelLoadError, match="failed its warm-up call: KeyError"):
        ridge.warm_up({"a": 1.0})


def test_onnx_model(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    w = np.array([[2.0], [-1.0]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["XW"]),
            helper.make_node("Add", ["XW", "B"], ["Y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])],
        [
            helper.make_tensor("W", TensorProto.FLOAT, [2, 1], w.ravel().tolist()),
            helper.make_tensor("B", TensorProto.FLOAT, [1], [0.5]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "linear.onnx"
    onnx.save(model, path)
    cand = load_candidate(f"lin-onnx@1={path}?features=a,b")
    assert cand.kind == "onnx"
    xs = rows_of(10)
    X = np.array([[x["a"], x["b"]] for x in xs], dtype=np.float32)
    expected = (X @ w + np.float32(0.5))[:, 0]
    assert [o.value for o in cand.predict_batch(xs)] == expected.tolist()
    with pytest.raises(ModelLoadError, match="feature order is unknown"):
        load_candidate(f"lin-onnx@1={path}")


# -- fair latency --------------------------------------------------------------------------


class FixedCost:
    """Costs ``call_ms`` per call plus nearly nothing per row: batching hides the call cost."""

    def __init__(self, call_ms: float) -> None:
        self.call_ms = call_ms
        self.sizes: list[int] = []

    def predict_many(self, xs: list[dict[str, Any]]) -> list[float]:
        self.sizes.append(len(xs))
        time.sleep(self.call_ms / 1000.0)
        return [1.0] * len(xs)


def test_sample_is_deterministic_by_request_id() -> None:
    keys = [f"req-{i}" for i in range(2000)]
    xs: list[dict[str, Any]] = [{} for _ in keys]
    a, b = FixedCost(0.0), FixedCost(0.0)
    Candidate("a@1", a, sample_rate=0.05).predict_batch(xs, keys)
    Candidate("b@1", b, sample_rate=0.05).predict_batch(xs[::-1], keys[::-1])
    singles = a.sizes.count(1)
    assert singles == b.sizes.count(1) and 60 <= singles <= 140  # ~5% of 2,000


def test_published_latency_estimates_the_single_call_cost() -> None:
    model = FixedCost(2.0)
    cand = Candidate("slow-call@1", model, sample_rate=0.05)
    published: list[float] = []
    for batch in range(4):
        keys = [f"b{batch}-{i}" for i in range(200)]
        published += [o.latency_ms for o in cand.predict_batch([{} for _ in keys], keys)]
    stats = cand.latency
    assert stats.batch_calls == 4 and stats.batch_requests == 800
    assert stats.amortized_ms is not None and stats.amortized_ms < 0.1  # 2 ms / 200 rows
    # every published figure is one measured single call, each >= the 2 ms sleep
    assert min(published) >= 2.0
    assert set(published) <= set(stats.recent)
    assert 2.0 <= float(np.median(published)) < 10.0


def test_worker_cli_refuses_a_bad_model_in_one_line_before_kafka(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    broken = write(
        tmp_path / "gpu.py",
        """
        class NeedsGPU:
            def predict(self, X):
                raise RuntimeError("CUDA device not found")

        model = NeedsGPU()
        """,
    )
    # an address where no broker answers: the models are refused before it is tried
    for spec, fragment in [
        (f"m@1={tmp_path / 'absent.joblib'}", "not found"),
        (f"gpu@1={broken}:model?features=a", "failed its warm-up call: RuntimeError: CUDA"),
    ]:
        started = time.monotonic()
        rc = main(["worker", "--candidate", spec, "--bootstrap", "127.0.0.1:9"])
        err = capsys.readouterr().err
        assert rc == 1 and time.monotonic() - started < 2.0
        assert err.count("\n") == 1 and err.startswith("understudy: error: ")
        assert fragment in err


def test_warm_up_request_refuses_a_dict_model_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    example = {"sqft": 80.0, "bedrooms": 2.0, "bathrooms": 1.0, "age_years": 10.0}
    example |= {"distance_km": 3.0, "lot_size": 0.0, "region": "north"}
    ridge = "m@1=streams.demo_models:ridge_candidate"
    assert load_candidate(ridge, example=example).warmed
    with pytest.raises(ModelLoadError, match="failed its warm-up call: KeyError: 'sqft'"):
        load_candidate(ridge, example={"rooms": 3.0})
    (tmp_path / "request.json").write_text('{"rooms": 3}')
    for arg, fragment in [
        (f"@{tmp_path / 'request.json'}", "failed its warm-up call: KeyError: 'sqft'"),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "cannot read a JSON object"),
    ]:
        argv = ["worker", "--candidate", ridge, "--warm-up-request", arg]
        rc = main([*argv, "--bootstrap", "127.0.0.1:9"])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and fragment in err, err


def test_the_c_sample_points_are_the_python_ones() -> None:
    """The C extension's BLAKE2b (streams/_speedups.c) against hashlib's, through both
    sample_points: equal floats for ids of every length (empty, one 128-byte block exactly,
    several blocks) and any characters, so a worker built without the extension samples
    the very same requests."""
    from streams import models

    if models._native_points is None:
        pytest.skip("the C extension was not built (see test_the_c_decoder_is_built)")
    rng = random.Random(5)
    alphabet = "az09-_é€中🙂\u0000\uffff"
    keys = [f"7-{i}" for i in range(5000)] + ["", "x" * 127, "x" * 128, "x" * 129, "€" * 300]
    keys += [
        "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300))) for _ in range(3000)
    ]
    got = models.sample_points(keys)
    assert got == models.python_sample_points(keys)
    assert all(0.0 <= p < 1.0 for p in got)


def test_a_batchs_outcomes_are_the_same_with_and_without_the_c_extension() -> None:
    """The C extension makes a batch of finite float answers; anything else in a batch
    leaves it to the Python loop. Either way, the outcomes of to_outcome, pair by pair."""
    from streams import models, native

    class Price(float):
        pass

    rng = random.Random(5)
    odd: list[Any] = [math.nan, math.inf, 3, np.float64(2.5), Price(1.5), None, "a", True]
    for trial in range(300):
        n = rng.randrange(0, 40)
        outputs: list[Any] = [rng.uniform(-1e6, 1e6) for _ in range(n)]
        latencies: list[Any] = [rng.uniform(0, 50) for _ in range(n)]
        if n and trial % 3 == 0:
            outputs[rng.randrange(n)] = rng.choice(odd)
        if n and trial % 7 == 0:
            latencies[rng.randrange(n)] = 2  # an int latency: the Python loop's
        want = [to_outcome(o, lat) for o, lat in zip(outputs, latencies, strict=True)]
        assert models.python_to_outcomes(outputs, latencies) == want
        got = models.to_outcomes(outputs, latencies)
        assert got == want and all(type(o) is Outcome for o in got)
        if native.float_outcomes is not None:
            made = native.float_outcomes(Outcome, models.NO_SCORES, outputs, latencies)
            plain = all(
                type(o) is float and math.isfinite(o) and type(lat) is float
                for o, lat in zip(outputs, latencies, strict=True)
            )
            assert (made is not None) == plain
            if made is not None:
                assert made == want and all(o.scores is models.NO_SCORES for o in made)
    if native.float_outcomes is not None:
        with pytest.raises(ValueError):
            native.float_outcomes(Outcome, models.NO_SCORES, [1.0], [])
        with pytest.raises(TypeError):
            native.float_outcomes(dict, models.NO_SCORES, [1.0], [1.0])
