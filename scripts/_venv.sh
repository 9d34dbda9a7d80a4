# Sourced by scripts/serve and scripts/test: makes .venv (Python 3.11+) and installs
# loadwarden into it, editable, with the extras named in $1 (e.g. "dev").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "loadwarden needs Python 3.11 or newer (found: $("$python" --version 2>&1))" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
spec="."
[ -n "${1:-}" ] && spec=".[$1]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
# xds-protos (the mesh extra) ships a stale copy of opentelemetry-proto's modules
# (grpc/grpc#42926); whichever is installed last owns those files. Put opentelemetry-proto's
# own back, so the OTLP exporters import.
if .venv/bin/python -m pip show --quiet xds-protos >/dev/null 2>&1; then
  otel=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))' 2>/dev/null || true)
  if [ -n "$otel" ] && ! .venv/bin/python -c 'from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "opentelemetry-proto==$otel"
  fi
fi
