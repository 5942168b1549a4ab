#!/usr/bin/env python
"""The hospitals' door to the SuperLink: HTTPS that forwards only the Fleet API, bounded.

    python scripts/deploy/fleet_proxy.py --listen 0.0.0.0:9093 --superlink 127.0.0.1:9092 [--keys deploy-keys]
        [--max-body 8MiB] [--rate 50] [--burst 2000]

In Flower 1.42 one SuperLink port serves the Fleet API (SuperNodes: /v1/fleet/...), the Control
API (the `flwr` CLI: start runs, register SuperNode keys, read logs) and the ServerApp's runtime
API. Anyone holding `ca.pem` who reaches that port can start a run, whose ClientApp then executes
at every hospital. So the SuperLink listens on the coordinator's loopback only
(`start_superlink.sh --host 127.0.0.1 --port 9092`), and this proxy, the only port open to the
network, passes `POST /v1/fleet/*` (and `GET /health`) through and refuses everything else with
403. SuperNode authentication (signed requests) is checked by the SuperLink as before; the proxy
terminates TLS with the SuperLink's own certificate and key, and verifies the SuperLink with ca.pem.

Requests reach the proxy before anyone is authenticated, so it bounds them: a body larger than
`--max-body` is refused (413) before it is read, from its Content-Length or, for a chunked body,
as soon as the bytes received pass the limit; each client address gets `--rate` requests a second
(bursts up to `--burst`) and is answered 503 with Retry-After beyond that. While the SuperLink is
down (a restart) every request is answered 502/504, which Flower's SuperNode retries, so the
hospitals rejoin on their own once it is back. Refusals are logged with the client's address.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import re
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

FLEET_PREFIX = "/v1/fleet/"
HEALTH = "/health"
# Hop-by-hop and recomputed headers are not forwarded (RFC 9110, 7.6.1).
DROPPED_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade", "te"}

#: The largest request body passed on. A SuperNode's largest request is one PushObject: one object of
#: its reply. Flower cuts every array into chunks of at most 5 MiB (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE),
#: and its other objects (metrics, configs, the message itself) are KBs; 8 MiB leaves room for both
#: plus protobuf framing. docs/deployment.md "Bounding requests" says how to compute it for a run.
DEFAULT_MAX_BODY = 8 * 2**20
#: Requests a second per client address, and the burst it may send at once. A SuperNode pushes and
#: pulls a message as one request per object (an adapter chunk, a record), so a reply is a burst
#: of tens to hundreds of requests; between messages it polls about once a second.
DEFAULT_RATE = 50.0
DEFAULT_BURST = 2000.0
#: Statuses Flower's SuperNode retries (flwr/supercore/retry/http_retry.py `_RETRYABLE_STATUS_CODES`;
#: its heartbeat the same, flwr/supernode/fleet_http_connection.py). Any other error status, 500
#: included, ends the SuperNode's fleet and heartbeat loops: the node never rejoins.
BAD_GATEWAY, SERVICE_UNAVAILABLE, GATEWAY_TIMEOUT = 502, 503, 504
REFUSAL_LOG_EVERY_S = 10.0  # a client over the rate limit is logged at most this often

log = logging.getLogger("fleet_proxy")


def allowed(method: str, path: str) -> bool:
    """Only what a SuperNode sends: the Fleet API (POST), and the health probe."""
    return (method == "POST" and path.startswith(FLEET_PREFIX) and ".." not in path) or (
        method == "GET" and path == HEALTH
    )


def upstream_failure_status(error: httpx.HTTPError) -> int:
    """The status for a request the SuperLink did not answer (down, restarting, hung): one Flower's
    SuperNode retries. A timeout is 504; a refused or dropped connection is 502."""
    return GATEWAY_TIMEOUT if isinstance(error, httpx.TimeoutException) else BAD_GATEWAY


def parse_size(text: str) -> int:
    """'8MiB', '512KiB', '1048576', '10MB' -> bytes; a ValueError naming the accepted forms otherwise."""
    units = {"": 1, "b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in units:
        raise ValueError(f"size {text!r}: give bytes, or a number with KiB, MiB, GiB, KB, MB or GB (e.g. 8MiB)")
    return int(float(match.group(1)) * units[match.group(2).lower()])


class BodyTooLarge(Exception):
    """A request body over the limit; `seen` is its declared length, or the bytes read when it passed it."""

    def __init__(self, seen: int, limit: int, declared: bool) -> None:
        how = "declares" if declared else "streamed more than"
        super().__init__(f"body {how} {seen} bytes; the limit is {limit} (--max-body)")
        self.seen = seen


async def read_bounded(request: Request, limit: int) -> bytes:
    """The request body, never holding more than `limit` (+ one chunk) bytes: Content-Length is
    checked before anything is read, and a chunked body is counted as it streams."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge(int(declared), limit, declared=True)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(len(body), limit, declared=False)
    return bytes(body)


@dataclass
class RateLimiter:
    """A token bucket per client address: `rate` requests a second, up to `burst` at once."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # client -> (tokens, when)
    max_clients: int = 100_000  # past this, clients whose bucket refilled are forgotten

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"rate {self.rate} / burst {self.burst}: the rate must be > 0 and the burst >= 1")

    def wait_s(self, client: str) -> float:
        """0 when `client` may send a request now (and it is counted), else the seconds until it may."""
        now = self.clock()
        tokens, then = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            self.buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate
        if len(self.buckets) >= self.max_clients:
            self._forget_idle(now)
        self.buckets[client] = (tokens - 1, now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        full = [c for c, (tokens, then) in self.buckets.items() if tokens + (now - then) * self.rate >= self.burst]
        for client in full:
            del self.buckets[client]


@dataclass
class RefusalLog:
    """Logs refusals with the client's address; a client refused over and over is logged once per period."""

    period_s: float = REFUSAL_LOG_EVERY_S
    clock: Callable[[], float] = time.monotonic
    last: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict)  # (client, status) -> (when, unlogged)

    def refused(self, client: str, status: int, request: str, why: str) -> None:
        now = self.clock()
        when, unlogged = self.last.get((client, status), (-math.inf, 0))
        if now - when < self.period_s:
            self.last[(client, status)] = (when, unlogged + 1)
            return
        more = f" (+{unlogged} more refused since the last line)" if unlogged else ""
        log.warning("refused %s from %s with %d: %s%s", request, client, status, why, more)
        self.last[(client, status)] = (now, 0)


def fleet_proxy(
    upstream: str,
    ca: Path,
    max_body: int = DEFAULT_MAX_BODY,
    rate: float = DEFAULT_RATE,
    burst: float = DEFAULT_BURST,
) -> Starlette:
    """An ASGI app forwarding allowed requests to the SuperLink at `upstream` (host:port, TLS)."""
    verify = ssl.create_default_context(cafile=str(ca))
    verify.check_hostname = False  # loopback hop to the coordinator's own SuperLink; the CA still verifies it
    client = httpx.AsyncClient(base_url=f"https://{upstream}", verify=verify, timeout=httpx.Timeout(None, connect=10.0))
    limiter = RateLimiter(rate, burst)
    refusals = RefusalLog()
    largest = 0

    def refuse(request: Request, address: str, status: int, why: str, **headers: str) -> Response:
        refusals.refused(address, status, f"{request.method} {request.url.path}", why)
        return PlainTextResponse(why + "\n", status_code=status, headers=headers)

    async def forward(request: Request) -> Response:
        nonlocal largest
        path = request.url.path
        address = request.client.host if request.client else "unknown"
        if not allowed(request.method, path):
            return refuse(
                request,
                address,
                403,
                "Only the Fleet API is served here; the Control API is reachable at the coordinator only.",
            )
        if (wait := limiter.wait_s(address)) > 0:
            return refuse(
                request,
                address,
                SERVICE_UNAVAILABLE,  # what a SuperNode retries (429 would end its loops)
                f"more than {rate:g} requests/s (burst {burst:g}) from {address}; retry later",
                **{"Retry-After": str(math.ceil(wait))},
            )
        try:
            body = await read_bounded(request, max_body)
        except BodyTooLarge as error:
            return refuse(request, address, 413, str(error), Connection="close")
        if len(body) > largest:
            largest = len(body)
            log.info("largest request so far: %d bytes (%s; limit %d)", largest, path, max_body)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED_HEADERS}
        try:
            reply = await client.request(
                request.method, path, params=request.query_params, content=body, headers=headers
            )
        except httpx.HTTPError as error:
            status = upstream_failure_status(error)
            log.warning("SuperLink at %s did not answer %s (%r): %d to %s", upstream, path, error, status, address)
            return PlainTextResponse(
                f"the SuperLink is unreachable ({type(error).__name__}); retry\n", status_code=status
            )
        kept = {k: v for k, v in reply.headers.items() if k.lower() not in DROPPED_HEADERS | {"content-encoding"}}
        return Response(reply.content, status_code=reply.status_code, headers=kept)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    route = Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    return Starlette(routes=[route], lifespan=lifespan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="0.0.0.0:9093", help="HOST:PORT hospitals dial (default 0.0.0.0:9093)")
    parser.add_argument(
        "--superlink", default="127.0.0.1:9092", help="the SuperLink on loopback (default 127.0.0.1:9092)"
    )
    parser.add_argument("--keys", type=Path, default=Path("deploy-keys"), help="ca.pem, superlink.pem, superlink.key")
    parser.add_argument(
        "--max-body",
        default=f"{DEFAULT_MAX_BODY // 2**20}MiB",
        help="largest request body passed on (default 8MiB; docs/deployment.md 'Bounding requests')",
    )
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="requests/s per client address (default 50)")
    parser.add_argument("--burst", type=float, default=DEFAULT_BURST, help="requests at once per client (default 2000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded request
    try:
        max_body = parse_size(args.max_body)
        RateLimiter(args.rate, args.burst)
    except ValueError as error:
        print(f"fleet_proxy: {error}", file=sys.stderr)
        return 2
    for name in ("ca.pem", "superlink.pem", "superlink.key"):
        if not (args.keys / name).is_file():
            print(f"fleet_proxy: {args.keys / name} missing; create it with scripts/deploy/keys.py", file=sys.stderr)
            return 2
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(
        fleet_proxy(args.superlink, args.keys / "ca.pem", max_body, args.rate, args.burst),
        host=host or "0.0.0.0",
        port=int(port),
        ssl_certfile=str(args.keys / "superlink.pem"),
        ssl_keyfile=str(args.keys / "superlink.key"),
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
