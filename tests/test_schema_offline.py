"""/schema with the network cut: its viewers (Scalar, Swagger UI) and their styles come from the package.

Chromium resolves no name but loopback (``--host-resolver-rules``), as on a machine with no network; every
request the page makes is recorded, and none may leave the server. ``UPDATE_SCREENSHOTS=1`` refreshes
docs/screenshots/schema-offline.png. The vendored files themselves are checked against scripts/vendor.py's
manifest, so what the wheel ships is what the registry served.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_playground import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, pytestmark, screenshots  # noqa: F401

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the test extras install it
    async_playwright = None

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "api" / "static" / "vendor"


def _load_vendor_script() -> Any:
    """scripts/vendor.py (the pinned packages), loaded by path: scripts/ is no package."""
    spec = importlib.util.spec_from_file_location("persona_runtime_vendor_script", ROOT / "scripts" / "vendor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


vendor = _load_vendor_script()

# Every host name fails to resolve but the loopback address the server listens on, and a name of its own for
# it: the viewers behave differently on localhost (Scalar shows a developer toolbar there, Swagger UI skips
# its online validator), so the page is also opened as a deployment would serve it.
SERVER_NAME = "docs.persona-runtime.test"
OFFLINE = f"--host-resolver-rules=MAP {SERVER_NAME} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


@pytest.fixture(params=["loopback", "named"])
def origin(request: pytest.FixtureRequest, llm_app: Any) -> str:
    url: str = llm_app.state.base_url
    return url if request.param == "loopback" else url.replace("127.0.0.1", SERVER_NAME)


@pytest.fixture(scope="module")
async def offline_browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, OFFLINE], headless=True
        )
        yield browser
        await browser.close()


async def offline_page(browser: Browser, base_url: str) -> tuple[Page, list[str], list[str]]:
    """A page, the requests it sent anywhere but the server, and those of its requests that failed."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    elsewhere: list[str] = []
    failed: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(base_url) else elsewhere.append(r.url))
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return page, elsewhere, failed


async def test_the_network_is_really_cut_for_this_browser(offline_browser, llm_app):
    page, elsewhere, _ = await offline_page(offline_browser, llm_app.state.base_url)
    with pytest.raises(Exception, match="ERR_NAME_NOT_RESOLVED"):
        await page.goto("https://cdn.jsdelivr.net/npm/swagger-ui-dist/swagger-ui.css")
    assert elsewhere == ["https://cdn.jsdelivr.net/npm/swagger-ui-dist/swagger-ui.css"]
    await page.context.close()


async def test_schema_renders_the_api_offline_with_scalar(offline_browser, origin, screenshots):  # noqa: F811
    base_url = origin
    page, elsewhere, failed = await offline_page(offline_browser, base_url)
    await page.goto(f"{base_url}/schema")
    # Scalar has drawn the document: its title and description, the routes by tag, a request example.
    await expect(page.get_by_role("heading", name="persona-runtime", exact=True).first).to_be_visible()
    await expect(page.get_by_text("Personas, prompt assembly and streaming chat").first).to_be_visible()
    sidebar = page.get_by_role("complementary", name="Sidebar for persona-runtime")
    await expect(sidebar.get_by_role("link", name="Health HTTP Method: GET")).to_be_visible()
    await sidebar.get_by_role("button", name="Open Group - chat").click()
    await expect(sidebar.get_by_role("link", name="Chat HTTP Method: POST")).to_be_visible()
    await expect(page.get_by_text(f"curl {base_url}/ready").first).to_be_attached()
    await page.wait_for_load_state("networkidle")
    if SERVER_NAME in base_url:
        await page.screenshot(path=screenshots / "schema-offline.png")
    assert elsewhere == [], f"/schema reached out: {elsewhere}"
    assert failed == [], failed
    await page.context.close()


async def test_swagger_ui_renders_the_api_offline(offline_browser, origin):
    base_url = origin
    page, elsewhere, failed = await offline_page(offline_browser, base_url)
    await page.goto(f"{base_url}/schema/swagger")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("persona-runtime")
    await expect(page.locator(".opblock-summary-path").first).to_be_visible()
    await page.wait_for_load_state("networkidle")
    assert elsewhere == [], f"/schema/swagger reached out: {elsewhere}"
    assert failed == [], failed
    await page.context.close()


async def test_the_viewer_pages_name_only_files_the_server_serves_without_a_key(llm_app):
    async with httpx.AsyncClient(base_url=llm_app.state.base_url) as http:
        for page in ("/schema", "/schema/swagger"):
            html = (await http.get(page)).text
            assert "https://" not in html and "http://" not in html, f"{page} names another host"
            vendored = [a for a in _assets(html) if a.startswith("/vendor/")]
            assert len(vendored) >= 2, html
            for asset in vendored:
                assert re.search(r"\?v=\d+\.\d+\.\d+$", asset), f"{asset} names no version, so browsers keep an old one"
                r = await http.get(asset)
                assert r.status_code == 200, asset
                kind = "css" if asset.split("?")[0].endswith(".css") else "javascript"
                assert kind in r.headers["content-type"], asset


def _assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/[^"]+)"', html)


def test_the_vendored_files_are_the_pinned_packages_with_their_licenses():
    manifest: dict[str, Any] = json.loads((VENDOR / "manifest.json").read_text())
    assert set(manifest) == {p.folder for p in vendor.PACKAGES}
    for package in vendor.PACKAGES:
        entry = manifest[package.folder]
        assert (entry["name"], entry["version"], entry["integrity"]) == (
            package.name,
            package.version,
            package.integrity,
        )
        assert "LICENSE" in entry["files"], f"{package.name} ships without its license"
        on_disk = {p.name for p in (VENDOR / package.folder).iterdir()}
        assert on_disk == set(entry["files"]), package.folder
        for name, sha256 in entry["files"].items():
            assert hashlib.sha256((VENDOR / package.folder / name).read_bytes()).hexdigest() == sha256, name
