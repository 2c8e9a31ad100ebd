"""Browser tier: the integration fixtures (real broker, real worker) plus headless Chromium."""

from __future__ import annotations

from tests.integration.conftest import hub_env, worker

__all__ = ["hub_env", "worker"]
