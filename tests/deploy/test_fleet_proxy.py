"""scripts/deploy/fleet_proxy.py: only the Fleet API passes, bounded, and a SuperLink that is down
answers what Flower's SuperNode retries (the slow tests with SuperNodes: tests/e2e/test_fleet_proxy.py)."""

from __future__ import annotations

import importlib.util
import logging
import sys

import httpx
import pytest
from flwr.supercore.retry.http_retry import _RETRYABLE_STATUS_CODES, _RETRYABLE_TRANSPORT_ERRORS
from starlette.testclient import TestClient

from fl_app.simulation import free_port
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("fleet_proxy", REPO / "scripts" / "deploy" / "fleet_proxy.py")
fleet_proxy = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = fleet_proxy  # its dataclasses look their module up
spec.loader.exec_module(fleet_proxy)
keys_spec = importlib.util.spec_from_file_location("deploy_keys", REPO / "scripts" / "deploy" / "keys.py")
deploy_keys = importlib.util.module_from_spec(keys_spec)
keys_spec.loader.exec_module(deploy_keys)

PULL = "/v1/fleet/pull-messages"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ca")
    deploy_keys.make_ca(folder)
    return folder / "ca.pem"


def proxy_to_nowhere(ca, **limits) -> TestClient:
    """The proxy's app in front of a port where no SuperLink listens (one being restarted)."""
    return TestClient(fleet_proxy.fleet_proxy(f"127.0.0.1:{free_port()}", ca, **limits))


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


@pytest.mark.parametrize("error_type", [*_RETRYABLE_TRANSPORT_ERRORS, httpx.ConnectError, httpx.ReadTimeout])
def test_a_superlink_that_does_not_answer_maps_to_a_status_flowers_supernode_retries(error_type):
    status = fleet_proxy.upstream_failure_status(error_type("down"))

    assert status in _RETRYABLE_STATUS_CODES, (
        f"{error_type.__name__} -> {status}; Flower retries only {set(_RETRYABLE_STATUS_CODES)}"
    )


def test_while_the_superlink_is_down_the_proxy_answers_502_not_500(ca):
    with proxy_to_nowhere(ca) as client:
        pulled = client.post(PULL, content=b"\x00" * 10)
        health = client.get("/health")

    assert pulled.status_code == 502 and health.status_code == 502
    assert pulled.status_code in _RETRYABLE_STATUS_CODES


def test_an_oversized_declared_body_is_refused_with_413_and_logged_with_the_client(ca, caplog):
    with caplog.at_level(logging.WARNING, logger="fleet_proxy"), proxy_to_nowhere(ca, max_body=1000) as client:
        refused = client.post(PULL, content=b"\x00" * 1001)
        passed_on = client.post(PULL, content=b"\x00" * 1000)  # at the limit: forwarded (to nowhere: 502)

    assert refused.status_code == 413 and "--max-body" in refused.text
    assert passed_on.status_code == 502
    assert "from testclient with 413" in caplog.text


def test_a_chunked_body_is_refused_once_it_streams_past_the_limit(ca):
    sent = []

    def chunks():
        for _ in range(100):
            sent.append(1)
            yield b"\x00" * 500

    with proxy_to_nowhere(ca, max_body=1000) as client:
        refused = client.post(PULL, content=chunks())

    assert refused.status_code == 413 and "streamed more than" in refused.text


def test_a_client_over_its_rate_is_answered_503_with_retry_after(ca, caplog):
    with caplog.at_level(logging.WARNING, logger="fleet_proxy"), proxy_to_nowhere(ca, rate=1, burst=3) as client:
        statuses = [client.post(PULL).status_code for _ in range(5)]
        over = client.post(PULL)

    assert statuses[:3] == [502, 502, 502] and statuses[3:] == [503, 503]
    assert over.status_code in _RETRYABLE_STATUS_CODES and int(over.headers["Retry-After"]) >= 1
    assert caplog.text.count("from testclient with 503") == 1  # once per period, not once per request


def test_the_rate_limiter_refills_at_its_rate_per_client():
    now = [0.0]
    limiter = fleet_proxy.RateLimiter(rate=2.0, burst=2.0, clock=lambda: now[0])

    first = [limiter.wait_s("a") for _ in range(3)]
    other = limiter.wait_s("b")
    now[0] = 0.5
    refilled = limiter.wait_s("a")

    assert first[:2] == [0.0, 0.0] and first[2] == pytest.approx(0.5)
    assert other == 0.0  # clients do not share a bucket
    assert refilled == 0.0


def test_bad_limits_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="rate must be > 0"):
        fleet_proxy.RateLimiter(rate=0, burst=10)
    with pytest.raises(ValueError, match="MiB"):
        fleet_proxy.parse_size("eight megabytes")
    assert fleet_proxy.parse_size("8MiB") == 8 * 2**20
    assert fleet_proxy.parse_size("512 KiB") == 512 * 1024
    assert fleet_proxy.parse_size("1000") == 1000
