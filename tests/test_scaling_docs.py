"""The scale-out configurations the docs hand out are valid: compose.yaml, and the HAProxy files HAProxy checks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.services import haproxy_config, required_binary

ROOT = Path(__file__).resolve().parent.parent


def test_compose_runs_the_runtime_without_a_host_port_behind_the_balancer():
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    runtime, balancer = services["runtime"], services["balancer"]
    assert "ports" not in runtime  # so that `--scale runtime=3` starts three side by side
    assert runtime["environment"]["PORT"] == "8666" and runtime["environment"]["HOST"] == "0.0.0.0"
    assert balancer["ports"] == ["127.0.0.1:8666:8666"]
    mounted = balancer["volumes"][0].split(":")[0]
    assert (ROOT / mounted).resolve() == ROOT / "docs" / "haproxy.cfg"
    assert "runtime:8666" in (ROOT / "docs" / "haproxy.cfg").read_text()
    assert "--scale runtime=3" in (ROOT / "compose.yaml").read_text()


def test_haproxy_accepts_the_documented_configuration_and_the_tests_own(tmp_path):
    haproxy = required_binary("/usr/sbin/haproxy", "haproxy")
    generated = tmp_path / "generated.cfg"
    generated.write_text(haproxy_config(8000, {"a": 8001, "b": 8002}, stats_socket=tmp_path / "admin.sock"))
    for config in (ROOT / "docs" / "haproxy.cfg", generated):
        checked = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def sections(config: str) -> dict[str, list[str]]:
    """An HAProxy configuration's sections (``"backend runtime"`` → its lines), comments and blanks left out."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in config.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not raw[0].isspace():
            current = found.setdefault(line, [])
        else:
            current.append(line)
    return found


# What a rolling restart depends on: which requests go where, what is retried, and how an instance is checked.
RETRY_AND_CHECK = ("use_backend", "default_backend", "balance", "retries", "option redispatch", "retry-on")
RETRY_AND_CHECK += ("option httpchk", "http-check", "on-marked-down", "timeout check", "option http-buffer-request")


def test_the_tests_balancer_retries_and_checks_as_the_documented_one():
    documented = sections((ROOT / "docs" / "haproxy.cfg").read_text())
    generated = sections(haproxy_config(8000, {"a": 8001, "b": 8002}))
    for name in ("defaults", "backend runtime", "backend runtime_writes"):
        assert name in documented and name in generated, name
    for name in ("defaults", "backend runtime", "backend runtime_writes"):
        in_docs = [line for line in documented[name] if line.startswith(RETRY_AND_CHECK)]
        in_tests = [line for line in generated[name] if line.startswith(RETRY_AND_CHECK)]
        if name == "backend runtime_writes":  # the tests' writes backend tracks the reads' checks instead
            in_docs = [line for line in in_docs if not line.startswith(("option httpchk", "http-check"))]
        assert in_docs == in_tests, name
    assert [line for line in documented["frontend public"] if line.startswith(RETRY_AND_CHECK)] == [
        line for line in generated["frontend public"] if line.startswith(RETRY_AND_CHECK)
    ]
    # Writes are never replayed on a response timeout: the instance has the request and may be acting on it.
    assert "retry-on conn-failure empty-response" in documented["backend runtime_writes"]
    # Only a request HAProxy holds whole can be sent again.
    assert "option http-buffer-request" in documented["defaults"]
    assert "retry-on conn-failure empty-response response-timeout" in documented["backend runtime"]
    for config in (documented, generated):
        checks = [line for line in config["backend runtime"] if line.startswith("default-server")]
        assert len(checks) == 1 and " check " in checks[0] and " fastinter " in checks[0]
        assert not any("on-marked-down" in line for lines in config.values() for line in lines)
