"""`AsyncClient.admin`: AdminService with the SDK's types, over the client's own call path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from loadwarden.sdk._admin_convert import (
    check_name,
    configure_operation_request,
    configure_pool_request,
    configured_operation,
    configured_pool,
    drain_server_request,
    register_server_request,
    registered_server,
)
from loadwarden.sdk._admin_types import Configured, OperationConfig, PoolConfig
from loadwarden.sdk._convert import server_status_from_proto
from loadwarden.sdk._types import OperationStatus, PoolStatus, ServerStatus
from loadwarden.v1 import admin_pb2 as _admin

# The client's `_call`: (method, request, timeout_s) -> response.
Call = Callable[[str, Message, float | None], Awaitable[Any]]


class AsyncAdmin:
    """Changes what the service decides over: pools, their servers, drains and batch operations.

    Reached as `client.admin`. Every call goes the way the client's own calls go:
    its channel (TLS, interceptors, tracing), its token, its deadline, its circuit
    breaker per method and its retries, and errors typed as the SDK's
    (`InvalidArgumentError` naming the field, `NotFoundError`, ...). With an admin
    token configured, the service accepts AdminService calls only with that token:
    give it to the client as `token`. Changes take effect for the next decision;
    work in flight is never cut off. To read a pool, use `client.load_status(pool)`.

    A retry goes out only when the call did not reach the service; a delete whose
    answer was lost may then be answered `NotFoundError` (it was deleted).

    Example:
        result = await client.admin.configure_pool(
            PoolConfig("api", strategy="p2c", servers=[ServerSpec("s1", "10.0.0.1:8080")])
        )
        await client.admin.drain_server("api", "s1")
    """

    __slots__ = ("_call",)

    def __init__(self, call: Call) -> None:
        self._call = call

    async def configure_pool(self, pool: PoolConfig, *, timeout_s: float | None = None) -> Configured[PoolStatus]:
        """Creates a pool or replaces its settings (and its servers, when `pool.servers` lists any).

        Args:
            pool: The pool's settings; fields left at zero take the service's defaults.
            timeout_s: Deadline of this call, seconds; the client's when None.

        Returns:
            The pool as it now stands, and whether it was created.

        Raises:
            TypeError: `pool` is not a `PoolConfig`.
            InvalidArgumentError: The service refused a field; the message names it
                ("pool.max_wait_ms: ...").
            LoadwardenError: Any other failure, typed by its status code.
        """
        response = await self._call("ConfigurePool", configure_pool_request(pool), timeout_s)
        return configured_pool(response)

    async def delete_pool(self, pool: str, *, timeout_s: float | None = None) -> None:
        """Removes a pool and its servers; pending decisions for it expire unapplied.

        Raises:
            ValueError: `pool` is not a non-empty string.
            NotFoundError: The pool does not exist.
            LoadwardenError: Any other failure, typed by its status code.
        """
        request = _admin.DeletePoolRequest(pool=check_name("pool", pool))
        await self._call("DeletePool", request, timeout_s)

    async def register_server(
        self, pool: str, server_id: str, address: str, *, weight: int = 0, timeout_s: float | None = None
    ) -> Configured[ServerStatus]:
        """Adds a server to a pool, or updates its address and weight.

        Args:
            pool: Pool name; the pool must exist.
            server_id: Server id, unique within the pool.
            address: Where clients reach it, e.g. "10.0.0.7:8080".
            weight: Relative weight for weighted strategies, 1-1000; 0 means the default, 1.
            timeout_s: Deadline of this call, seconds; the client's when None.

        Returns:
            The server as it now stands, and whether it was added.

        Raises:
            ValueError: An argument is of the wrong kind; the message names it.
            NotFoundError: The pool does not exist.
            InvalidArgumentError: The service refused a field; the message names it.
            LoadwardenError: Any other failure, typed by its status code.
        """
        request = register_server_request(pool, server_id, address, weight)
        return registered_server(await self._call("RegisterServer", request, timeout_s))

    async def deregister_server(self, pool: str, server_id: str, *, timeout_s: float | None = None) -> None:
        """Removes a server from a pool.

        Raises:
            ValueError: An argument is not a non-empty string; the message names it.
            NotFoundError: The pool or the server does not exist.
            LoadwardenError: Any other failure, typed by its status code.
        """
        request = _admin.DeregisterServerRequest(
            pool=check_name("pool", pool), server_id=check_name("server_id", server_id)
        )
        await self._call("DeregisterServer", request, timeout_s)

    async def drain_server(self, pool: str, server_id: str, *, timeout_s: float | None = None) -> ServerStatus:
        """Stops sending new work to a server; its requests in flight finish. Undone by `resume_server`.

        Returns:
            The server as it now stands (`ServerState.DRAINING`).

        Raises:
            ValueError: An argument is not a non-empty string; the message names it.
            NotFoundError: The pool or the server does not exist.
            LoadwardenError: Any other failure, typed by its status code.
        """
        request = drain_server_request(pool, server_id, draining=True)
        response: _admin.DrainServerResponse = await self._call("DrainServer", request, timeout_s)
        return server_status_from_proto(response.server)

    async def resume_server(self, pool: str, server_id: str, *, timeout_s: float | None = None) -> ServerStatus:
        """Puts a drained server back into rotation (a no-op for one that is not drained).

        Returns:
            The server as it now stands.

        Raises:
            ValueError: An argument is not a non-empty string; the message names it.
            NotFoundError: The pool or the server does not exist.
            LoadwardenError: Any other failure, typed by its status code.
        """
        request = drain_server_request(pool, server_id, draining=False)
        response: _admin.DrainServerResponse = await self._call("DrainServer", request, timeout_s)
        return server_status_from_proto(response.server)

    async def configure_operation(
        self, operation: OperationConfig, *, timeout_s: float | None = None
    ) -> Configured[OperationStatus]:
        """Creates a batch operation or replaces its settings.

        Args:
            operation: The operation's settings.
            timeout_s: Deadline of this call, seconds; the client's when None.

        Returns:
            The operation as it now stands, and whether it was created.

        Raises:
            TypeError: `operation` is not an `OperationConfig`.
            InvalidArgumentError: The service refused a field; the message names it
                ("operation.max_batch_size: ...").
            LoadwardenError: Any other failure, typed by its status code.
        """
        response = await self._call("ConfigureOperation", configure_operation_request(operation), timeout_s)
        return configured_operation(response)

    async def delete_operation(self, operation: str, *, timeout_s: float | None = None) -> None:
        """Removes a batch operation.

        Raises:
            ValueError: `operation` is not a non-empty string.
            NotFoundError: The operation does not exist.
            LoadwardenError: Any other failure, typed by its status code.
        """
        request = _admin.DeleteOperationRequest(operation=check_name("operation", operation))
        await self._call("DeleteOperation", request, timeout_s)
