"""The browser libraries shipped inside the package (``api/static/vendor``, from npm), served at /vendor, and
the /schema viewers that load them from there rather than from a CDN, so the pages work offline."""

from __future__ import annotations

from pathlib import Path

import msgspec
from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import OpenAPIRenderPlugin, ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

__all__ = ["VENDOR_DIR", "VENDOR_PATH", "schema_viewers", "vendor_router", "vendored"]

VENDOR_DIR = Path(__file__).parent / "static" / "vendor"
VENDOR_PATH = "/vendor"

# The playground's icon: Litestar's default favicon is a CDN link, the one request an offline page would miss.
_FAVICON = '<link rel="icon" type="image/svg+xml" href="/playground/favicon.svg">'


def vendor_router() -> Router:
    """``/vendor/<package>/<file>``: public files (no key needed), cached for a day. Pages name them with
    ``?v=<version>`` (:func:`vendored`), so a new version is a new URL and no browser keeps an old one."""
    return create_static_files_router(
        path=VENDOR_PATH,
        directories=[VENDOR_DIR],
        name="vendor",
        cache_control=CacheControlHeader(max_age=86400),
        include_in_schema=False,
    )


def vendored(folder: str, name: str) -> str:
    """The URL of a vendored file, with its package's version (from the manifest scripts/vendor.py writes)."""
    manifest = msgspec.json.decode((VENDOR_DIR / "manifest.json").read_bytes())
    return f"{VENDOR_PATH}/{folder}/{name}?v={manifest[folder]['version']}"


def schema_viewers() -> list[OpenAPIRenderPlugin]:
    """Scalar at /schema (and /schema/scalar), Swagger UI at /schema/swagger, both from /vendor.

    Scalar's web fonts, its telemetry and its "Ask AI" agent would reach out to scalar.com, and its developer
    toolbar (shown on localhost) offers scalar.com's services: the page uses the system's fonts and leaves the
    rest out.
    """
    return [
        ScalarRenderPlugin(
            js_url=vendored("scalar", "standalone.js"),
            css_url=vendored("scalar", "standalone.css"),
            options={
                "withDefaultFonts": False,
                "telemetry": False,
                "agent": {"disabled": True},
                "showDeveloperTools": "never",
            },
            favicon=_FAVICON,
        ),
        SwaggerRenderPlugin(
            js_url=vendored("swagger-ui", "swagger-ui-bundle.js"),
            css_url=vendored("swagger-ui", "swagger-ui.css"),
            standalone_preset_js_url=vendored("swagger-ui", "swagger-ui-standalone-preset.js"),
            path="/swagger",
            favicon=_FAVICON,
        ),
    ]
