"""Operations routes: liveness and readiness, open without a key."""

from __future__ import annotations

from litestar import Response, get, head
from litestar.openapi import ResponseSpec

from api.deps import ResourcesDep
from core.metrics import CONTENT_TYPE

__all__ = ["health", "health_head", "metrics", "ready", "ready_head"]


@get("/health", exclude_from_auth=True, tags=["operations"])
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@head("/health", exclude_from_auth=True, tags=["operations"])
async def health_head() -> None:
    """The process is up (what load balancers and uptime checks that send HEAD ask)."""


@get("/metrics", exclude_from_auth=True, tags=["operations"], media_type=CONTENT_TYPE)
async def metrics(resources: ResourcesDep) -> Response[bytes]:
    """Prometheus text format, every worker's figures added up (``METRICS=off`` removes this route)."""
    return Response(resources.metrics.render(), media_type=CONTENT_TYPE)


_UNAVAILABLE = {
    503: ResponseSpec(
        data_container=dict[str, object],
        description="A dependency is down, or the server is shutting down",
        generate_examples=False,
    )
}


@get("/ready", exclude_from_auth=True, tags=["operations"], responses=_UNAVAILABLE)
async def ready(resources: ResourcesDep) -> Response[dict[str, object]]:
    """The database answers (and Redis, when one is configured)."""
    checks = await resources.readiness()
    ok = all(v == "ok" for v in checks.values())
    return Response({"status": "ready" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


@head("/ready", exclude_from_auth=True, tags=["operations"], responses=_UNAVAILABLE)
async def ready_head(resources: ResourcesDep) -> Response[None]:
    """The status of ``GET /ready``, without its body."""
    checks = await resources.readiness()
    return Response(None, status_code=200 if all(v == "ok" for v in checks.values()) else 503)
