"""Architecture checks: the pure core imports no IO framework; the package is typed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT

PURE_MODULES = [
    "statsyard_agent._protocol",
    "statsyard_agent._aggregate",
    "statsyard_agent._timerstats",
    "statsyard_agent._sketch",
    "statsyard_agent.storage",
]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_core_imports_neither_trio_nor_prometheus(module: str) -> None:
    code = (f"import sys, {module}; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('trio', 'prometheus_client', 'h11')); print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def test_package_ships_py_typed() -> None:
    assert (ROOT / "statsyard_agent" / "py.typed").exists()
