"""scripts/deploy/fleet_proxy.py as a process: an oversized body is refused without being read, so
the proxy's memory does not grow by the body's size (issue 26: one 256 MiB POST took it to 841 MB)."""

from __future__ import annotations

import importlib.util
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fl_app.simulation import free_port, stop_process_group
from tests.conftest import REPO

PROXY = REPO / "scripts" / "deploy" / "fleet_proxy.py"
keys_spec = importlib.util.spec_from_file_location("deploy_keys", REPO / "scripts" / "deploy" / "keys.py")
deploy_keys = importlib.util.module_from_spec(keys_spec)
keys_spec.loader.exec_module(deploy_keys)

LIMIT = 2**20  # the proxy's --max-body here
MiB = 2**20


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def tls_socket(port: int, ca: Path) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def status_of(head: bytes) -> int:
    """The status code of an HTTP reply's first bytes."""
    assert head.startswith(b"HTTP/1.1 "), f"no HTTP reply, got {head[:80]!r}"
    return int(head.split()[1])


def reply_so_far(sock: ssl.SSLSocket) -> bytes:
    """What the proxy has answered on `sock` so far, without waiting (b"" when nothing yet)."""
    sock.setblocking(False)
    try:
        return sock.recv(4096)
    except (ssl.SSLWantReadError, BlockingIOError):
        return b""
    finally:
        sock.settimeout(30)


def post_declaring(port: int, ca: Path, length: int) -> int:
    """Send only the headers of a POST declaring `length` bytes; the reply status (before any body byte)."""
    with tls_socket(port, ca) as sock:
        sock.sendall(
            b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Type: application/protobuf\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        return status_of(sock.recv(4096))


def post_chunked(port: int, ca: Path, total: int, chunk: int = 64 * 1024) -> tuple[int, int]:
    """Stream a chunked POST of up to `total` bytes, stopping once the proxy answers; (status, bytes sent)."""
    sent, reply = 0, b""
    with tls_socket(port, ca) as sock:
        sock.sendall(b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = f"{chunk:x}\r\n".encode() + b"\x00" * chunk + b"\r\n"
        try:
            while sent < total and not (reply := reply_so_far(sock)):
                sock.sendall(piece)
                sent += chunk
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the proxy answered and closed: its reply is in the socket's buffer
        return status_of(reply or sock.recv(4096)), sent


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """The proxy with --max-body 1MiB in front of a port where no SuperLink listens."""
    keys = tmp_path_factory.mktemp("keys")
    deploy_keys.make_ca(keys)
    deploy_keys.make_superlink_cert(keys, ["127.0.0.1"])
    port = free_port()
    log = keys / "fleet-proxy.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, PROXY, "--listen", f"127.0.0.1:{port}", "--superlink", f"127.0.0.1:{free_port()}"]
            + ["--keys", str(keys), "--max-body", "1MiB"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        tls = ssl.create_default_context(cafile=str(keys / "ca.pem"))
        tls.check_hostname = False
        deadline = time.time() + 60
        while True:  # up once /health is answered (502: no SuperLink behind it)
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"https://127.0.0.1:{port}/health", verify=tls, timeout=2).status_code == 502:
                    break
            except httpx.HTTPError:
                assert time.time() < deadline, f"proxy not up after 60 s: {log.read_text()}"
                time.sleep(0.3)
        yield port, process, keys / "ca.pem", log
    finally:
        stop_process_group(process)


def test_a_declared_oversized_body_is_refused_before_it_is_sent(proxy):
    port, process, ca, log = proxy
    before = peak_rss(process.pid)

    status = post_declaring(port, ca, 256 * MiB)

    assert status == 413
    assert peak_rss(process.pid) - before < 8 * MiB
    assert "from 127.0.0.1 with 413" in log.read_text()


def test_a_chunked_oversized_body_is_cut_off_at_the_limit_and_memory_does_not_grow_by_its_size(proxy):
    port, process, ca, _ = proxy
    post_chunked(port, ca, 2 * LIMIT)  # the first refusal's one-off costs are not the body's
    before = peak_rss(process.pid)

    status, sent = post_chunked(port, ca, 64 * MiB)

    assert status == 413
    assert sent < 32 * MiB, f"the proxy read {sent / MiB:.0f} MiB before refusing"
    assert peak_rss(process.pid) - before < 8 * MiB
