"""Server reflection that also resolves method names (public: the simulated backends serve it too).

The upb descriptor pool behind grpcio-reflection cannot find the file of a
method symbol (``pkg.Service.Method``), so ``grpcurl describe pkg.Service.Method``
fails. This pool wrapper falls back to the enclosing service for such symbols.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]  # grpcio-reflection: no stubs, no py.typed


class _MethodAwarePool:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def FindFileContainingSymbol(self, symbol: str) -> Any:  # noqa: N802 - the protobuf DescriptorPool method name
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            parent, _, _ = symbol.rpartition(".")
            if not parent:
                raise
            return self._pool.FindMethodByName(symbol).containing_service.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Serves grpc.reflection.v1alpha for ``service_names`` (plus reflection itself)."""
    names = (*service_names, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server, pool=_MethodAwarePool(descriptor_pool.Default()))
