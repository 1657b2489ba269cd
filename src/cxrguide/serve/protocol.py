"""uvicorn's h11 protocol with a request-header timeout (uvicorn has none).

uvicorn times out idle keep-alive connections (``timeout_keep_alive``) but not a connection
whose request headers trickle in (or never come): each such "slowloris" socket holds one of the
``limit_concurrency`` slots for as long as the client likes, and enough of them answer every
other client with 503. Here a connection must deliver a complete request head within
``header_timeout_s`` of connecting (or of its previous response), else it is closed with one log
line. The body has its own deadline in :mod:`cxrguide.serve.app`.

:func:`uvicorn_config` is the one place the server's uvicorn settings are made from a
:class:`~cxrguide.config.ServeConfig` (``serve`` and the tests use it): no ``server:`` header
(it names the software and its version to every scanner), the limits and the protocol above.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from cxrguide.config.inference import ServeConfig

log = logging.getLogger("uvicorn.error")


def header_timeout_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass for ``uvicorn.Config(http=...)``."""

    class HeaderTimeoutH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._waiting_for_head():
                if self._header_timer is None:
                    self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self._waiting_for_head() and not self.transport.is_closing():
                client = self.client[0] if self.client else "?"
                log.warning(
                    "client %s sent no complete request within %g s; closed",
                    client,
                    header_timeout_s,
                )
                self.transport.close()

    return HeaderTimeoutH11


def uvicorn_config(app: Any, cfg: ServeConfig) -> uvicorn.Config:
    """uvicorn's settings for ``app`` under ``cfg`` (the socket is bound by the caller)."""
    return uvicorn.Config(
        app,
        log_level=cfg.log_level,
        timeout_keep_alive=cfg.keep_alive_s,
        limit_concurrency=cfg.max_connections,
        server_header=False,
        http=header_timeout_protocol(cfg.header_timeout_s),
    )
