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
