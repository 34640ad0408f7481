"""Portkey's gateway as a peer: its install command, its routing headers, the loopback preload, and the
command line that picks it, without installing it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import portkey_gateway
from bench.run import COMPLETIONS, DIRECT, DIRECT_JSON, _parser


def test_install_is_pinned_into_its_own_cached_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = portkey_gateway.cache_dir("1.15.2")
    assert folder == tmp_path / "persona-runtime-bench" / "portkey-1.15.2"
    command = portkey_gateway.install_command(folder, "1.15.2")
    assert command[:2] == ["npm", "install"]
    assert command[command.index("--prefix") + 1] == str(folder)
    assert command[-1] == "@portkey-ai/gateway@1.15.2"


def test_a_finished_install_is_not_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = portkey_gateway.cache_dir("9.9.9")
    entry = folder / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    entry.parent.mkdir(parents=True)
    entry.write_text("")
    (folder / ".bench-installed").write_text("9.9.9\n")
    # No npm call: with PATH empty it could not run, and the folder is returned as it is.
    monkeypatch.setenv("PATH", "")
    assert portkey_gateway._install_sync("9.9.9") == folder


def test_requests_are_routed_to_the_provider_as_openai() -> None:
    headers = portkey_gateway.headers("http://127.0.0.1:4321")
    assert headers["x-portkey-provider"] == "openai"
    assert headers["x-portkey-custom-host"] == "http://127.0.0.1:4321/v1"
    assert headers["Authorization"].startswith("Bearer ")


def test_the_gateway_runs_headless_behind_the_loopback_preload(tmp_path: Path) -> None:
    command = portkey_gateway.command(tmp_path / "portkey-1.15.2", tmp_path, 5555)
    assert command[0] == "node"
    preload = tmp_path / "portkey-loopback.mjs"
    assert command[1:3] == ["--import", preload.as_uri()]
    assert '"127.0.0.1"' in preload.read_text()
    assert command[3].endswith("build/start-server.js")
    assert command[-2:] == ["--port=5555", "--headless"]


def test_compare_takes_one_peer_or_both() -> None:
    assert _parser().parse_args([]).compare == []
    assert _parser().parse_args(["--compare", "portkey"]).compare == ["portkey"]
    args = _parser().parse_args(["--compare", "litellm,portkey", "--portkey-version", "1.9.8"])
    assert args.compare == ["litellm", "portkey"]
    assert args.portkey_version == "1.9.8"
    assert _parser().parse_args([]).portkey_version == portkey_gateway.VERSION
    with pytest.raises(SystemExit):
        _parser().parse_args(["--compare", "litellm,kong"])


def test_paths_take_the_non_streamed_ones() -> None:
    assert _parser().parse_args(["--paths", "direct,completions,direct-json"]).paths == [
        DIRECT,
        COMPLETIONS,
        DIRECT_JSON,
    ]
    with pytest.raises(SystemExit):
        _parser().parse_args(["--paths", "direct,nothing"])
