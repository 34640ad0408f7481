"""Fetch the browser libraries the package serves (the /schema viewers, the playground's Markdown and charts) from npm.

The files land in ``api/static/vendor/<name>/`` beside their licenses, with ``manifest.json`` naming each
package's version, tarball and integrity and each file's SHA-256. They are committed, so that the wheel ships
them and nothing is fetched at run time; run this again only to change a pinned version:

    python scripts/vendor.py            # download the pinned tarballs, check their sha512, write the files
    python scripts/vendor.py --check    # the same, but only compare with what is committed (exit 1 on a change)

Only the npm registry is contacted (``NPM_REGISTRY`` replaces https://registry.npmjs.org), over HTTPS.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "api" / "static" / "vendor"
REGISTRY = os.environ.get("NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")

# The Scalar tarball carries no license file; this is the LICENSE of github.com/scalar/scalar, whose MIT terms
# ask for the notice to travel with the code.
SCALAR_LICENSE = """MIT License

Copyright (c) 2023-present Scalar

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


@dataclass(frozen=True, kw_only=True)
class Package:
    """One pinned npm package: which of its files are served (tarball path → file name) and its licenses."""

    name: str
    version: str
    integrity: str  # the registry's `dist.integrity` for this version
    folder: str
    license: str
    files: dict[str, str]
    license_files: dict[str, str] = field(default_factory=dict)
    license_text: str | None = None  # when the tarball has no license file of its own

    @property
    def tarball(self) -> str:
        base = self.name.rsplit("/", 1)[-1]
        return f"{REGISTRY}/{self.name}/-/{base}-{self.version}.tgz"


PACKAGES = (
    Package(
        name="@scalar/api-reference",
        version="1.76.4",
        integrity="sha512-bHSVv494yuNTcBzmfZR3eYhckOTiu3L6IJmvM2kdKzBVmWqm+JhEHbYc7ydsv7FBSs3vTW9sCz00La2dFgWxVg==",
        folder="scalar",
        license="MIT",
        files={"dist/browser/standalone.js": "standalone.js", "dist/styles/standalone.css": "standalone.css"},
        license_text=SCALAR_LICENSE,
    ),
    Package(
        name="swagger-ui-dist",
        version="5.35.0",
        integrity="sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==",
        folder="swagger-ui",
        license="Apache-2.0",
        files={
            "swagger-ui-bundle.js": "swagger-ui-bundle.js",
            "swagger-ui-standalone-preset.js": "swagger-ui-standalone-preset.js",
            "swagger-ui.css": "swagger-ui.css",
        },
        license_files={
            "LICENSE": "LICENSE",
            "NOTICE": "NOTICE",
            "swagger-ui-bundle.js.LICENSE.txt": "swagger-ui-bundle.js.LICENSE.txt",
            "swagger-ui-standalone-preset.js.LICENSE.txt": "swagger-ui-standalone-preset.js.LICENSE.txt",
        },
    ),
    Package(
        name="marked",
        version="18.3.0",
        integrity="sha512-ed8zmPXlBb3UfGXN5iHMQyMhFpdqLgoV5umUXx/Q1R+FW3q8VpqpyoKUwlENL9appo2UMvNLURDVaT3AMOryGA==",
        folder="marked",
        license="MIT",
        files={"lib/marked.esm.js": "marked.esm.js"},
        license_files={"LICENSE": "LICENSE"},
    ),
    Package(
        name="dompurify",
        version="3.5.0",
        integrity="sha512-LYC0ZkE8P1V42JsRYTwMdme/2ET8SpOc5AA2eOFjP/IadvRd2fwiT4TVz5vkfy0XUx12aS2UaRkTnfVPNOv9vw==",
        folder="dompurify",
        license="MPL-2.0 OR Apache-2.0",
        # .mjs renamed .js: browsers load a module only with a JavaScript content type, which .js is given everywhere.
        files={"dist/purify.es.mjs": "purify.es.js"},
        license_files={"LICENSE": "LICENSE"},
    ),
    Package(
        name="uplot",
        version="1.6.32",
        integrity="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
        folder="uplot",
        license="MIT",
        files={"dist/uPlot.esm.js": "uPlot.esm.js", "dist/uPlot.min.css": "uPlot.min.css"},
        license_files={"LICENSE": "LICENSE"},
    ),
)


def download(package: Package) -> bytes:
    with urllib.request.urlopen(package.tarball, timeout=120) as response:
        data: bytes = response.read()
    algorithm, _, expected = package.integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise SystemExit(f"{package.name}@{package.version}: the tarball's {algorithm} is {digest}, not {expected}")
    return data


def unpack(package: Package, tarball: bytes) -> dict[str, bytes]:
    """The package's served files and licenses, by their name in its folder."""
    wanted = {**package.files, **package.license_files}
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member in archive.getmembers():
            inner = member.name.split("/", 1)[-1]  # npm tarballs put everything under package/
            if inner in wanted and member.isfile():
                extracted = archive.extractfile(member)
                assert extracted is not None
                found[wanted[inner]] = extracted.read()
    missing = sorted(set(wanted) - {inner for inner, name in wanted.items() if name in found})
    if missing:
        raise SystemExit(f"{package.name}@{package.version} has no {', '.join(missing)}")
    if package.license_text is not None:
        found["LICENSE"] = package.license_text.encode()
    return found


def manifest_entry(package: Package, files: dict[str, bytes]) -> dict[str, object]:
    return {
        "name": package.name,
        "version": package.version,
        "license": package.license,
        "tarball": package.tarball.replace(REGISTRY, "https://registry.npmjs.org"),
        "integrity": package.integrity,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    args = parser.parse_args(argv)
    manifest: dict[str, object] = {}
    changed: list[str] = []
    for package in PACKAGES:
        files = unpack(package, download(package))
        manifest[package.folder] = manifest_entry(package, files)
        for name, data in files.items():
            path = VENDOR / package.folder / name
            if path.exists() and path.read_bytes() == data:
                continue
            changed.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        print(f"{package.name}@{package.version} ({package.license}): {', '.join(sorted(files))}")
    text = json.dumps(manifest, indent=2) + "\n"
    manifest_path = VENDOR / "manifest.json"
    if not manifest_path.exists() or manifest_path.read_text() != text:
        changed.append(str(manifest_path.relative_to(ROOT)))
        if not args.check:
            manifest_path.write_text(text)
    if args.check and changed:
        print("differs from the registry's files: " + ", ".join(changed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
