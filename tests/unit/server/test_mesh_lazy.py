"""The service loads xds-protos only with [xds] or [rls] on: its mesh extra is optional, and
xds-protos overwrites opentelemetry-proto's modules when installed after it (grpc/grpc#42926)."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import sys
import loadwarden.server
from loadwarden.server.app._config import parse_config
from loadwarden.server.app import _service
from loadwarden.server.mesh import RlsSettings, XdsSettings
config = parse_config({"xds": {"enabled": False}, "rls": {"enabled": False}})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("envoy", "xds", "udpa", "validate"))
assert not loaded, loaded[:5]
from loadwarden.server.mesh import AdsServer  # imported on first use
assert any(m.startswith("envoy") for m in sys.modules)
print("ok")
"""


def test_the_mesh_is_imported_on_first_use_only() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
