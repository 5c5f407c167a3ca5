"""The declared dependency ranges are exactly what CI tests (docs/dependencies.md).

For each library whose internals the SDK plugs into, the lower bound in ``pyproject.toml``
equals the pin in ``.ci/constraints-oldest.txt`` (where CI runs the compatibility subset),
there is an upper bound below the next untested minor, and the installed version lies in
the range. A bump is then a one-line change plus a green CI, never a surprise.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

pytestmark = pytest.mark.compat

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in ("deepspeed", "serve"):
        specs += project["optional-dependencies"][extra]
    return {Requirement(spec).name: Requirement(spec) for spec in specs}


def _oldest_pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / ".ci" / "constraints-oldest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[name.strip()] = Version(pinned.strip())
    return pins


def test_every_pinned_dependency_has_its_floor_pinned_and_a_ceiling():
    requirements, pins = _requirements(), _oldest_pins()
    assert {"torch", "transformers", "peft", "accelerate", "deepspeed", "pluggy", "numba"} <= set(pins)
    for name, pinned in pins.items():
        assert name in requirements, f"{name} is pinned in constraints-oldest.txt but not declared"
        spec = requirements[name].specifier
        floors = [Version(s.version) for s in spec if s.operator == ">="]
        ceilings = [Version(s.version) for s in spec if s.operator == "<"]
        assert floors == [pinned], f"{name}: floor {floors} != CI's oldest {pinned}"
        assert ceilings, f"{name} has no upper bound: the next untested minor could install"
        assert pinned in spec


#: Dependencies of an optional extra the test install does not include: absent, their range is
#: not checked here (it is wherever the extra is installed); present, it is checked as any other.
OPTIONAL = {"deepspeed": "deepspeed"}


@pytest.mark.parametrize("name", ["torch", "transformers", "peft", "accelerate", "pluggy", "deepspeed", "numba",
                                  "starlette", "uvicorn", "httpx", "pydantic"])
def test_installed_version_is_inside_the_declared_range(name):
    try:
        installed = Version(version(name))
    except PackageNotFoundError:
        if name in OPTIONAL:
            pytest.skip(f"{name} is not installed (the [{OPTIONAL[name]}] extra): its range is checked where it is")
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    spec = _requirements()[name].specifier
    assert spec.contains(installed, prereleases=True), f"{name} {installed} is outside {spec}"


def test_a_missing_optional_extra_skips_and_a_missing_core_dependency_fails(monkeypatch):
    """The deepspeed-less install (README: "without the [deepspeed] extra ... skipped") really skips."""
    import sys

    module = sys.modules[__name__]

    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(module, "version", missing)
    with pytest.raises(pytest.skip.Exception, match=r"the \[deepspeed\] extra"):
        test_installed_version_is_inside_the_declared_range("deepspeed")
    with pytest.raises(pytest.fail.Exception, match="peft is not installed"):
        test_installed_version_is_inside_the_declared_range("peft")
