#!/usr/bin/env python
"""The hospitals' door to the SuperLink: HTTPS that forwards only the Fleet API.

    python scripts/deploy/fleet_proxy.py --listen 0.0.0.0:9093 --superlink 127.0.0.1:9092 [--keys deploy-keys]

In Flower 1.42 one SuperLink port serves the Fleet API (SuperNodes: /v1/fleet/...), the Control
API (the `flwr` CLI: start runs, register SuperNode keys, read logs) and the ServerApp's runtime
API. Anyone holding `ca.pem` who reaches that port can start a run, whose ClientApp then executes
at every hospital. So the SuperLink listens on the coordinator's loopback only
(`start_superlink.sh --host 127.0.0.1 --port 9092`), and this proxy, the only port open to the
network, passes `POST /v1/fleet/*` (and `GET /health`) through and refuses everything else with
403. SuperNode authentication (signed requests) is checked by the SuperLink as before; the proxy
terminates TLS with the SuperLink's own certificate and key, and verifies the SuperLink with ca.pem.
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
import sys
from collections.abc import AsyncIterator
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


def allowed(method: str, path: str) -> bool:
    """Only what a SuperNode sends: the Fleet API (POST), and the health probe."""
    return (method == "POST" and path.startswith(FLEET_PREFIX) and ".." not in path) or (
        method == "GET" and path == HEALTH
    )


def fleet_proxy(upstream: str, ca: Path) -> Starlette:
    """An ASGI app forwarding allowed requests to the SuperLink at `upstream` (host:port, TLS)."""
    verify = ssl.create_default_context(cafile=str(ca))
    verify.check_hostname = False  # loopback hop to the coordinator's own SuperLink; the CA still verifies it
    client = httpx.AsyncClient(base_url=f"https://{upstream}", verify=verify, timeout=None)

    async def forward(request: Request) -> Response:
        path = request.url.path
        if not allowed(request.method, path):
            return PlainTextResponse(
                "Only the Fleet API is served here; the Control API is reachable at the coordinator only.\n",
                status_code=403,
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED_HEADERS}
        reply = await client.request(
            request.method, path, params=request.query_params, content=await request.body(), headers=headers
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
    args = parser.parse_args(argv)
    for name in ("ca.pem", "superlink.pem", "superlink.key"):
        if not (args.keys / name).is_file():
            print(f"fleet_proxy: {args.keys / name} missing; create it with scripts/deploy/keys.py", file=sys.stderr)
            return 2
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(
        fleet_proxy(args.superlink, args.keys / "ca.pem"),
        host=host or "0.0.0.0",
        port=int(port),
        ssl_certfile=str(args.keys / "superlink.pem"),
        ssl_keyfile=str(args.keys / "superlink.key"),
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
