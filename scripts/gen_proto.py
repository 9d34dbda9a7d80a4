"""Generate the Python code for proto/loadwarden/v1 into a package root.

Usage: python scripts/gen_proto.py [OUT_ROOT]   (default: sdk/)

Writes OUT_ROOT/loadwarden/v1/{name}_pb2.py, _pb2.pyi, _pb2_grpc.py and
_pb2_grpc.pyi for every .proto file, and descriptors.binpb: the contract's
FileDescriptorSet with its comments (source info), which the service's reflection
serves so that ``grpcurl describe`` shows them (the _pb2 modules embed descriptors
without comments). grpcio-tools writes the modules and the _pb2.pyi message stubs;
mypy-protobuf's protoc-gen-mypy_grpc plugin writes the _pb2_grpc.pyi service stubs
(grpcio-tools has none), so that ``mypy --strict`` sees typed stubs, servicers and
add_*_to_server. The committed copy under sdk/ must equal a fresh run; a test checks.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc_tools  # type: ignore[import-untyped]  # grpcio-tools ships no stubs or py.typed marker
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DESCRIPTORS = "descriptors.binpb"
MYPY_GRPC_PLUGIN = "protoc-gen-mypy_grpc"


def _mypy_grpc_plugin() -> Path:
    """The mypy-protobuf plugin beside the running interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / MYPY_GRPC_PLUGIN
    if beside.is_file():
        return beside
    found = shutil.which(MYPY_GRPC_PLUGIN)
    if found is None:
        raise SystemExit(f"{MYPY_GRPC_PLUGIN} not found; install the dev extra (mypy-protobuf)")
    return Path(found)


def generate(out_root: Path) -> list[Path]:
    """Runs protoc over every .proto file; returns the generated files."""
    (out_root / "loadwarden" / "v1").mkdir(parents=True, exist_ok=True)
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin={MYPY_GRPC_PLUGIN}={_mypy_grpc_plugin()}",
        f"--mypy_grpc_out=quiet:{out_root}",
        f"--descriptor_set_out={out_root / 'loadwarden' / 'v1' / DESCRIPTORS}",
        "--include_source_info",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    v1 = out_root / "loadwarden" / "v1"
    return sorted([*v1.glob("*_pb2*.py*"), v1 / DESCRIPTORS])


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "sdk"
    for path in generate(target):
        print(path)
