"""A TCP proxy that delays bytes: each client->server chunk is forwarded ``latency_ms`` after it arrived.

Unlike an HTTP proxy it keeps the client's connections as they are (one upstream connection per client
connection, kept open as long as the client keeps its own), so connection reuse and TLS handshakes cost
what they would over a slow link; TLS passes through untouched (it is bytes). The delay is one way
(client -> server) and pipelined: a chunk waits ``latency_ms`` from its own arrival, not behind the
previous chunk's wait, so a request/response exchange gains one ``latency_ms`` and throughput is not
capped by it. Server -> client bytes are forwarded at once. Stdlib only (asyncio, one thread).

    python -m devkit.tcplatency --target-port P [--target-host H] [--listen-port N] [--latency-ms M]
                                [--ready-file F]

serves until SIGTERM or SIGINT; ``start_tcp_latency`` runs one as a child of a ``Components`` and
waits until it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import TYPE_CHECKING

from devkit.procs import free_port

if TYPE_CHECKING:
    from devkit.components import Components

MODULE = "devkit.tcplatency"
CHUNK = 65536


class TcpLatencyProxy:
    """Listens on ``listen_host:port`` and forwards each connection to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, latency_ms: float = 0.0,
                 listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.delay = latency_ms / 1000.0
        self.listen_host = listen_host
        self.port = listen_port or free_port(listen_host)
        self.connections = 0  # accepted so far
        self.bytes_up = 0  # client -> server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> TcpLatencyProxy:
        self._thread = threading.Thread(target=self._run, name="tcplatency", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or self._server is None:
            raise RuntimeError(f"tcp latency proxy did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.listen_host, self.port, backlog=512))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    # -- one connection ---------------------------------------------------------------------------
    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        for writer in (client_w, server_w):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = asyncio.ensure_future(self._delayed(client_r, server_w))
        down = asyncio.ensure_future(self._pipe(server_r, client_w))
        try:
            # both directions to their end (half-closes passed on); a failing one ends the connection
            await asyncio.wait([up, down], return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:  # the proxy stops
            pass
        finally:
            for task in (up, down):
                task.cancel()
            for writer in (client_w, server_w):
                writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server -> client, as it comes; EOF is passed on as a half-close."""
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def _delayed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client -> server: each chunk (and the EOF) leaves ``delay`` after it arrived, in order."""
        loop = asyncio.get_running_loop()
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def pump() -> None:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except OSError:  # reset by the client: pass it on as an end of stream
                    data = b""
                line.put_nowait((loop.time() + self.delay, data))
                if not data:
                    return

        pumping = asyncio.ensure_future(pump())
        try:
            while True:
                due, data = await line.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                self.bytes_up += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            pumping.cancel()


# -- as a child process -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyProxyProcess:
    """A ``TcpLatencyProxy`` in a child process: connect to ``127.0.0.1:port``."""

    proc: Popen[bytes]
    port: int
    latency_ms: float


def start_tcp_latency(components: Components, target_port: int, *, latency_ms: float,
                      target_host: str = "127.0.0.1", name: str = "tcplatency") -> LatencyProxyProcess:
    """A proxy process in front of ``target_host:target_port`` adding ``latency_ms``; returns once it serves."""
    port = free_port()
    ready = components.log_dir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    proc = components.start_module(name, MODULE, ["--target-host", target_host, "--target-port", str(target_port),
                                                  "--listen-port", str(port), "--latency-ms", str(latency_ms),
                                                  "--ready-file", str(ready)])
    components.wait(ready.exists, timeout=60, what=f"{name} serving", procs=[proc])
    return LatencyProxyProcess(proc, port, latency_ms)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to each client->server chunk")
    parser.add_argument("--ready-file", help="written once serving")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    proxy = TcpLatencyProxy(args.target_host, args.target_port, latency_ms=args.latency_ms,
                            listen_port=args.listen_port).start()
    if args.ready_file:
        Path(args.ready_file).write_text("ready")
    try:
        while not done.wait(1.0):
            pass
    finally:
        proxy.stop()
        print(f"tcplatency: {proxy.connections} connections, {proxy.bytes_up} bytes up", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
