#!/usr/bin/env python3
"""A small HTTP/1.1 file server written on ``xdpstack.aio`` (asyncio streams).

Serves the files under ``--directory`` with GET and HEAD: ``Content-Length``,
``Content-Type``, ``Last-Modified``, persistent connections (HTTP/1.1 keep-alive unless
``Connection: close``; HTTP/1.0 with ``Connection: keep-alive``), ``index.html`` or a
listing for directories, 400/404/405/414/431/505 errors. Paths cannot leave the
directory. Files are sent in 1 MiB blocks with ``await writer.drain()`` between them, so
the server's memory stays small whatever the file size.

    python examples/http_aio_server.py --directory /srv/files --port 8080
    curl http://<stack address>:8080/some/file

The server is plain asyncio code: with ``--kernel`` it runs on the kernel's TCP
(``asyncio.start_server``) instead of xdpstack's, unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import html
import mimetypes
import os
import signal
import sys
import urllib.parse
from pathlib import Path

try:  # run from a checkout without installing: the client library is in ../client
    import xdpstack  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))


BLOCK = 1 << 20
MAX_LINE = 8192
MAX_HEADERS = 100
KEEPALIVE_TIMEOUT_S = 30.0

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}


class BadRequest(Exception):
    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(detail)
        self.status = status


class FileServer:
    def __init__(self, root: Path, *, quiet: bool = False) -> None:
        self.root = root.resolve()
        self.quiet = quiet
        self.requests = 0

    def log(self, peer: object, request: str, status: int, length: int) -> None:
        if not self.quiet:
            print(f'{peer} "{request}" {status} {length}', flush=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), KEEPALIVE_TIMEOUT_S)
                except (TimeoutError, asyncio.LimitOverrunError, ValueError):
                    break
                if not line:
                    break  # the client closed
                if line in (b"\r\n", b"\n"):
                    continue  # tolerated before a request line (RFC 9112 2.2)
                request = line.decode("latin-1").rstrip("\r\n")
                try:
                    keep_alive = await self.respond(request, reader, writer, peer)
                except BadRequest as exc:
                    await self.send_error(writer, exc.status, str(exc), close=True)
                    self.log(peer, request, exc.status, 0)
                    break
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def read_headers(self, reader: asyncio.StreamReader) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            try:
                line = await reader.readline()
            except (asyncio.LimitOverrunError, ValueError):
                raise BadRequest(431, "header line too long") from None
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            if line in (b"\r\n", b"\n"):
                return headers
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise BadRequest(400, "malformed header line")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        raise BadRequest(431, "too many header lines")

    async def respond(
        self,
        request: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: object,
    ) -> bool:
        """Answer one request; whether the connection stays open."""
        parts = request.split(" ")
        if len(parts) != 3:
            raise BadRequest(400, "malformed request line")
        method, target, version = parts
        if len(target) > MAX_LINE:
            raise BadRequest(414)
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            raise BadRequest(505, f"{version} is not supported")
        headers = await self.read_headers(reader)
        if "transfer-encoding" in headers:
            raise BadRequest(400, "request bodies with a transfer coding are not supported")
        length = headers.get("content-length", "0")
        if not length.isdigit():
            raise BadRequest(400, "bad Content-Length")
        if int(length):
            await reader.readexactly(int(length))  # a body we do not need
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if version == "HTTP/1.1":
            keep_alive = "close" not in tokens
        else:
            keep_alive = "keep-alive" in tokens
        self.requests += 1

        if method not in ("GET", "HEAD"):
            await self.send_error(writer, 405, f"{method} is not allowed", keep_alive=keep_alive)
            self.log(peer, request, 405, 0)
            return keep_alive
        path = self.resolve(target)
        if path is None:
            await self.send_error(writer, 404, "no such file", keep_alive=keep_alive)
            self.log(peer, request, 404, 0)
            return keep_alive
        if path.is_dir():
            index = path / "index.html"
            if index.is_file():
                path = index
            else:
                body = self.listing(path, target).encode()
                await self.send_head(writer, 200, len(body), "text/html; charset=utf-8", keep_alive)
                if method == "GET":
                    writer.write(body)
                    await writer.drain()
                self.log(peer, request, 200, len(body))
                return keep_alive
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below, across awaits)
        except OSError:
            await self.send_error(writer, 404, "cannot open the file", keep_alive=keep_alive)
            self.log(peer, request, 404, 0)
            return keep_alive
        with f:
            stat = os.fstat(f.fileno())
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            await self.send_head(
                writer,
                200,
                stat.st_size,
                ctype,
                keep_alive,
                {"Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True)},
            )
            sent = 0
            if method == "GET":
                while sent < stat.st_size:
                    block = await asyncio.to_thread(f.read, min(BLOCK, stat.st_size - sent))
                    if not block:
                        break  # the file shrank: the client sees a short body and we close
                    writer.write(block)
                    sent += len(block)
                    await writer.drain()
                if sent < stat.st_size:
                    keep_alive = False
        self.log(peer, request, 200, sent)
        return keep_alive

    def resolve(self, target: str) -> Path | None:
        """The file or directory ``target`` names under the root, or None."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
        if not path.startswith("/") or "\0" in path:
            return None
        candidate = (self.root / path.lstrip("/")).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            return None
        return candidate if candidate.exists() else None

    def listing(self, directory: Path, target: str) -> str:
        base = urllib.parse.urlsplit(target).path.rstrip("/")
        rows = []
        for entry in sorted(directory.iterdir()):
            name = entry.name + ("/" if entry.is_dir() else "")
            href = f"{base}/{urllib.parse.quote(name)}"
            rows.append(f'<li><a href="{html.escape(href)}">{html.escape(name)}</a></li>')
        title = html.escape(base or "/")
        return f"<!doctype html><title>{title}</title><h1>{title}</h1><ul>{''.join(rows)}</ul>\n"

    async def send_head(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        length: int,
        ctype: str,
        keep_alive: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {REASONS[status]}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            "Server: xdpstack-http-example",
            f"Content-Type: {ctype}",
            f"Content-Length: {length}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def send_error(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        detail: str,
        *,
        keep_alive: bool = False,
        close: bool = False,
    ) -> None:
        body = f"{status} {REASONS[status]}: {detail}\n".encode()
        extra = {"Allow": "GET, HEAD"} if status == 405 else None
        await self.send_head(
            writer, status, len(body), "text/plain", keep_alive and not close, extra
        )
        writer.write(body)
        await writer.drain()


async def run(args: argparse.Namespace) -> int:
    server_app = FileServer(Path(args.directory), quiet=args.quiet)
    if args.kernel:
        server = await asyncio.start_server(
            server_app.handle, args.host or None, args.port, backlog=args.backlog
        )
    else:
        from xdpstack import aio

        if args.socket:
            os.environ["XDPSTACK_SOCKET"] = args.socket
        server = await aio.start_server(
            server_app.handle, args.host or None, args.port, backlog=args.backlog
        )
    host, port = server.sockets[0].getsockname()[:2]
    where = "the kernel's TCP" if args.kernel else "xdpstack"
    print(
        f"serving {server_app.root} on http://{host}:{port}/ ({where})",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
        server.close()
        if hasattr(server, "close_clients"):
            server.close_clients()
    print(f"stopped after {server_app.requests} requests", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="An HTTP/1.1 file server (GET, HEAD, keep-alive) on xdpstack.aio."
    )
    parser.add_argument("--directory", "-d", default=".", help="what to serve (default .)")
    parser.add_argument("--host", default="", help="address to listen on (default: all)")
    parser.add_argument("--port", "-p", type=int, default=8080)
    parser.add_argument("--backlog", type=int, default=128)
    parser.add_argument("--socket", help="the daemon's socket (default: $XDPSTACK_SOCKET)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--kernel", action="store_true", help="use the kernel's TCP instead")
    parser.add_argument("--quiet", "-q", action="store_true", help="no request log")
    args = parser.parse_args(argv)
    if not Path(args.directory).is_dir():
        parser.error(f"{args.directory} is not a directory")
    try:
        if args.uvloop:
            import uvloop

            return uvloop.run(run(args))
        return asyncio.run(run(args))
    except OSError as exc:
        print(f"{os.path.basename(sys.argv[0])}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
