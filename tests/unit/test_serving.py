"""hub.serving: the listen/ready/stop loop the gateway and the console share."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from hub.errors import ConfigError
from hub.serving import serve_runner


def hello_app() -> web.Application:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


def test_it_serves_until_cancelled_and_then_frees_the_port() -> None:
    """``ready`` gets the bound URL (port 0 resolved); after cancelling, the port accepts nobody."""

    async def scenario() -> tuple[str, str]:
        urls: list[str] = []
        task = asyncio.create_task(
            serve_runner(
                web.AppRunner(hello_app()), "127.0.0.1", 0, name="x", busy_hint="", ready=urls.append
            ),
        )
        while not urls and not task.done():
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as session, session.get(urls[0]) as response:
            body = await response.text()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return urls[0], body

    url, body = asyncio.run(scenario())
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    assert not url.endswith(":0/")
    assert body == "hello"
    port = int(url.rsplit(":", 1)[1].rstrip("/"))
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_a_busy_port_is_a_config_error_naming_the_server_and_the_address() -> None:
    """Another listener holds the port: the error names who could not listen, where, and the hint."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"the console cannot listen on 127\.0\.0\.1:{port}") as error:
            asyncio.run(
                serve_runner(
                    web.AppRunner(hello_app()), "127.0.0.1", port, name="the console", busy_hint="other"
                ),
            )
    assert error.value.hint == "other"
