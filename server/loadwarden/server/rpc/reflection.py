"""Server reflection that resolves method names and serves the contract's comments
(public: the simulated backends serve it too).

- The upb descriptor pool behind grpcio-reflection cannot find the file of a method
  symbol (``pkg.Service.Method``), so ``grpcurl describe pkg.Service.Method`` would
  fail. The pool wrapper falls back to the enclosing service for such symbols.
- The descriptors the ``_pb2`` modules embed carry no comments, so reflection would
  describe every field without its units and ranges. For the contract's own files
  the wrapper answers from ``loadwarden/v1/descriptors.binpb`` instead, the same
  files with their source info (``scripts/gen_proto.py`` writes both; a test keeps
  them equal to a fresh run). Other files (health, reflection, well-known types) are
  served as before.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]  # grpcio-reflection: no stubs, no py.typed

DESCRIPTORS = "descriptors.binpb"


@functools.cache
def commented_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The contract's files with their comments, by file name (``loadwarden/v1/decision.proto``)."""
    data = resources.files("loadwarden.v1").joinpath(DESCRIPTORS).read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    for file in files:
        for message in file.message_type:
            _drop_json_names(message)
    return {f.name: f for f in files}


def _drop_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    """protoc's set names every field's JSON name, the embedded descriptors do not; grpcurl
    would then print camelCase keys where it prints the proto names today."""
    for field in (*message.field, *message.extension):
        field.ClearField("json_name")
    for nested in message.nested_type:
        _drop_json_names(nested)


class _Commented:
    """A file descriptor as grpcio-reflection reads it (``name``, ``dependencies``,
    ``CopyToProto``), copied from its commented twin when there is one."""

    __slots__ = ("_descriptor", "_files")

    def __init__(self, descriptor: Any, files: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._descriptor = descriptor
        self._files = files

    @property
    def name(self) -> str:
        return str(self._descriptor.name)

    @property
    def dependencies(self) -> list[_Commented]:
        return [_Commented(d, self._files) for d in self._descriptor.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:  # noqa: N802 - the protobuf method name
        commented = self._files.get(self.name)
        if commented is None:
            self._descriptor.CopyToProto(proto)
        else:
            proto.CopyFrom(commented)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._descriptor, name)


class _ReflectionPool:
    def __init__(self, pool: Any, files: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._pool = pool
        self._files = files

    def FindFileByName(self, name: str) -> _Commented:  # noqa: N802 - the protobuf DescriptorPool method name
        return _Commented(self._pool.FindFileByName(name), self._files)

    def FindFileContainingSymbol(self, symbol: str) -> _Commented:  # noqa: N802 - the protobuf DescriptorPool method name
        try:
            found = self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            parent, _, _ = symbol.rpartition(".")
            if not parent:
                raise
            found = self._pool.FindMethodByName(symbol).containing_service.file
        return _Commented(found, self._files)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Serves grpc.reflection.v1alpha for ``service_names`` (plus reflection itself)."""
    names = (*service_names, reflection.SERVICE_NAME)
    pool = _ReflectionPool(descriptor_pool.Default(), commented_files())
    reflection.enable_server_reflection(names, server, pool=pool)
