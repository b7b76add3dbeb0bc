"""A reverse proxy in front of a real llama-server that can make it look sick, for tests:
`/health` always passes through (the server looks alive), and while `sick` every other
request is answered 500, as a llama-server whose GPU driver faulted does. `poison` makes only
requests whose body contains that text fail (one bad prompt on a sound server).

It runs in a thread of the test process, on 127.0.0.1; the llama-server behind it and
everything else stay real. Where the server lives in a network namespace of its own, the
proxy runs there as a process (`python -m harness.sick_llama --port P --target-port T
--sick-file F`): it is sick while the file F exists.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading

import aiohttp
from aiohttp import web

from harness.stack import free_port

FAILURE = {"error": {"code": 500, "type": "server_error", "message": "CUDA error: unspecified"}}


class SickLlamaProxy:
    def __init__(
        self, target_port: int, port: int | None = None, sick_file: str | None = None
    ) -> None:
        self.target = f"http://127.0.0.1:{target_port}"
        self.port = port or free_port()
        self.sick = False
        self.sick_file = sick_file  # sick while this file exists, too
        self.poison: str | None = None
        self.failed = 0  # requests answered 500 by the proxy itself
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        failing = request.path != "/health" and (
            self.sick
            or (self.sick_file is not None and os.path.exists(self.sick_file))
            or (self.poison is not None and self.poison.encode() in body)
        )
        if failing:
            self.failed += 1
            return web.json_response(FAILURE, status=500)
        assert self._session is not None
        try:
            async with self._session.request(
                request.method,
                self.target + request.path_qs,
                data=body,
                headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
            ) as answer:
                payload = await answer.read()
                return web.Response(
                    body=payload,
                    status=answer.status,
                    content_type=answer.content_type,
                )
        except aiohttp.ClientError:
            return web.Response(status=502)

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def start(self) -> SickLlamaProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


def main() -> None:
    """The proxy as a process of its own (inside a network namespace), until killed."""
    parser = argparse.ArgumentParser(description="llama-server proxy that can answer 500")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--sick-file", required=True, help="sick while this file exists")
    options = parser.parse_args()
    proxy = SickLlamaProxy(options.target_port, options.port, options.sick_file).start()
    try:
        threading.Event().wait()
    finally:
        proxy.stop()


if __name__ == "__main__":
    main()
