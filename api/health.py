"""Operations routes: liveness and readiness, open without a key."""

from __future__ import annotations

from litestar import Response, get

from api.deps import ResourcesDep

__all__ = ["health", "ready"]


@get("/health", exclude_from_auth=True, tags=["operations"])
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get("/ready", exclude_from_auth=True, tags=["operations"])
async def ready(resources: ResourcesDep) -> Response[dict[str, object]]:
    """The database answers (and Redis, when one is configured)."""
    checks = await resources.readiness()
    ok = all(v == "ok" for v in checks.values())
    return Response({"status": "ready" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)
