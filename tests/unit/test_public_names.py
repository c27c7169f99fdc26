"""Every public package says what it exports, and every exported name exists (API drift)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

pytestmark = pytest.mark.unit

PACKAGES = ["device_profiles", "device_profiles.wire", "drivers", "firmware_sim", "iot_runtime"]


@pytest.mark.parametrize("name", PACKAGES)
def test_exports_exist(name: str) -> None:
    module = importlib.import_module(name)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []
    assert len(set(module.__all__)) == len(module.__all__)


def test_every_module_of_ours_imports_and_declares_all() -> None:
    undeclared = []
    for package in (
        "device_profiles",
        "drivers",
        "edge_agent",
        "cloud_hub",
        "firmware_sim",
        "iot_runtime",
        "iotctl",
    ):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            if ".migrations" in info.name:
                continue
            module = importlib.import_module(info.name)
            if (
                not info.ispkg
                and not hasattr(module, "__all__")
                and not info.name.endswith((".cli", "_cli"))
            ):
                undeclared.append(info.name)
    assert undeclared == [], "modules without __all__"
