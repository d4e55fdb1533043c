"""The wheel carries the schemas, and the code finds them installed or in a checkout.

Building a real wheel needs setuptools>=77 from the package index (build isolation), which
a unit test must not depend on. Instead setuptools' own ``build_py`` (the command that
lays out a wheel's contents) runs here, offline, on the ``[tool.setuptools]`` configuration
of pyproject.toml, into a temporary directory: leaving the schemas, a history file or a
package out of the configuration fails these tests. Checked by hand too: ``pip wheel``,
then ``pip install --no-deps`` of the wheel into a fresh venv, used from another directory.
"""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest

import streams.schemas
from streams.schemas import EVENTS, Codec, schema_dir

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
PACKAGED = "streams/_schemas"


def setuptools_config() -> dict[str, Any]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(pyproject["tool"]["setuptools"])


def build_py(target: Path) -> set[str]:
    """Run setuptools' build_py on our configuration; the files it lays out, relative."""
    cfg = setuptools_config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools' own deprecation notices
        from setuptools.dist import Distribution

        dist = Distribution(
            {
                "name": "understudy",
                "script_name": "setup.py",
                "packages": cfg["packages"],
                "package_dir": cfg.get("package-dir", {}),
                "package_data": cfg.get("package-data", {}),
                "include_package_data": cfg.get("include-package-data", True),
            }
        )
        cmd = dist.get_command_obj("build_py")
        cmd.build_lib = str(target)
        cmd.compile = False
        cmd.ensure_finalized()
        cmd.run()
    return {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    target = tmp_path_factory.mktemp("build-lib")
    mp = pytest.MonkeyPatch()
    mp.chdir(ROOT)  # setuptools resolves package directories from the project root
    try:
        return target, build_py(target)
    finally:
        mp.undo()


def test_every_package_under_streams_is_configured() -> None:
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "streams").rglob("__init__.py")
    }
    configured = set(setuptools_config()["packages"])
    missing = on_disk - configured
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert configured - on_disk == {"streams._schemas", "streams._deploy"}
    assert setuptools_config()["package-dir"] == {
        "streams._schemas": "schemas",
        "streams._deploy": "deploy",
    }


def test_the_wheel_carries_the_default_alert_rules_and_nothing_else_of_deploy(
    built: tuple[Path, set[str]],
) -> None:
    target, files = built
    assert {f for f in files if f.startswith("streams/_deploy/")} == {"streams/_deploy/rules.yaml"}
    from streams.alerts.rules import load_rules

    assert load_rules(target / "streams/_deploy/rules.yaml") == load_rules(
        ROOT / "deploy/rules.yaml"
    )


def test_the_wheel_carries_every_schema_file(built: tuple[Path, set[str]]) -> None:
    _, files = built
    sources = {str(p.relative_to(SCHEMAS)) for p in SCHEMAS.rglob("*") if p.is_file()}
    assert any(s.startswith("history/") for s in sources)
    shipped = {f[len(PACKAGED) + 1 :] for f in files if f.startswith(PACKAGED + "/")}
    assert shipped == sources


def test_the_wheel_carries_every_module(built: tuple[Path, set[str]]) -> None:
    _, files = built
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "streams").rglob("*.py")}
    assert modules <= files
    assert "streams/py.typed" in files


def test_the_built_schemas_load_every_version(built: tuple[Path, set[str]]) -> None:
    target, _ = built
    codec = Codec(target / PACKAGED)
    checkout = Codec(SCHEMAS)
    for name in EVENTS:
        assert sorted(codec.versions[name]) == sorted(checkout.versions[name])
        assert codec.schemas[name].fingerprint == checkout.schemas[name].fingerprint


def test_schema_dir_in_a_checkout_is_the_top_level_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNDERSTUDY_SCHEMA_DIR", raising=False)
    assert not (ROOT / PACKAGED).exists(), "schemas are copied into the package only in a wheel"
    assert schema_dir() == SCHEMAS


def test_schema_dir_prefers_the_packaged_copy(
    monkeypatch: pytest.MonkeyPatch, built: tuple[Path, set[str]]
) -> None:
    """An installed wheel: streams/_schemas next to streams/schemas.py."""
    target, _ = built
    here = Path(streams.schemas.__file__).resolve().parent
    assert here / "_schemas" == streams.schemas._PACKAGED  # where build_py puts streams._schemas
    monkeypatch.delenv("UNDERSTUDY_SCHEMA_DIR", raising=False)
    monkeypatch.setattr(streams.schemas, "_PACKAGED", target / PACKAGED)
    assert schema_dir() == target / PACKAGED
    assert (target / "streams" / "schemas.py").is_file()  # the module that looks there


def test_the_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UNDERSTUDY_SCHEMA_DIR", str(tmp_path))
    assert schema_dir() == tmp_path
