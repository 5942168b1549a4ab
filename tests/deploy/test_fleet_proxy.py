"""scripts/deploy/fleet_proxy.py: only the Fleet API passes (the slow test with SuperNodes: tests/e2e/test_fleet_proxy.py)."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("fleet_proxy", REPO / "scripts" / "deploy" / "fleet_proxy.py")
fleet_proxy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fleet_proxy)


def test_only_fleet_requests_pass():
    assert fleet_proxy.allowed("POST", "/v1/fleet/pull-messages")
    assert fleet_proxy.allowed("GET", "/health")
    for method, path in [
        ("POST", "/v1/control/start-run"),
        ("POST", "/v1/control/register-node"),
        ("POST", "/v1/control/list-runs"),
        ("GET", "/v1/fleet/pull-messages"),
        ("POST", "/v1/fleet/../control/start-run"),
        ("POST", "/v1/runtime/pull-task-input"),
    ]:
        assert not fleet_proxy.allowed(method, path), (method, path)
