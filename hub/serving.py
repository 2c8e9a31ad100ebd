"""Serving an aiohttp application until SIGTERM: shared by the alert gateway and the console."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import ssl
from collections.abc import Callable

from aiohttp import web

from hub.errors import ConfigError


async def serve_runner(
    runner: web.AppRunner,
    host: str,
    port: int,
    *,
    name: str,
    busy_hint: str,
    ready: Callable[[str], None] = lambda _url: None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve the runner's app on host:port until cancelled or SIGTERM; ``ready(url)`` once it listens.

    The caller builds the runner (its access log and shutdown timeout differ). A port that cannot be
    bound is a :class:`ConfigError` naming ``name`` (``the console``) and the address, with ``busy_hint``.
    With ``ssl_context`` the app is served over HTTPS (and ``ready`` gets an ``https://`` URL).
    """
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"{name} cannot listen on {host}:{port}: {exc.strerror or exc}", hint=busy_hint
            ) from exc
        bound_host, bound_port = runner.addresses[0][:2]
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        ready(f"{'https' if ssl_context else 'http'}://{shown_host}:{bound_port}/")
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError):  # no signal handlers on some platforms
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def is_loopback(address: str | None) -> bool:
    """Whether a client or listening address is loopback (``localhost`` included); None is not."""
    if address == "localhost":
        return True
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


__all__ = ["is_loopback", "serve_runner"]
