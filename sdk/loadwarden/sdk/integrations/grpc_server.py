"""gRPC server interceptors that admit each incoming RPC through a loadwarden slot.

The idea of Netflix concurrency-limits' `ConcurrencyLimitServerInterceptor`, with
the limit held by the Decision service: per RPC, acquire a slot in the method's
pool, run the handler, release the slot with the handler's latency and success.
A denied RPC ends with RESOURCE_EXHAUSTED and the trailing metadata
`loadwarden-retry-after-ms`, the key the Decision service itself uses.

All four handler kinds are admitted. A unary response holds the slot while the
handler runs; a streamed response holds it until the stream ends (exhausted,
raised, or cancelled by the caller). A handler is "successful" unless it raised,
or ended (by `abort` or `set_code`) with a code in `SERVER_FAULT_CODES`; a client
error such as INVALID_ARGUMENT is the backend working as intended.

While the Decision service is unreachable the client's `slot_fallback` decides:
"local_limit" and "fail_open" serve with local slots, "fail_closed" answers
RESOURCE_EXHAUSTED. Any other failure to acquire (unknown pool, a service error)
is logged and follows the same rule: served unadmitted, or RESOURCE_EXHAUSTED
under "fail_closed". No control-plane error ever reaches the handler or becomes
INTERNAL/UNKNOWN for the caller.

Example:
    client = AsyncClient("127.0.0.1:50051")
    reporter = BackendReporter(client, "ml", "ml-1")
    server = grpc.aio.server(interceptors=[AsyncAdmissionInterceptor(
        client, lambda method: "ml" if method.startswith("/ml.v1.") else None,
        wait_s=0.5, reporter=reporter)])
"""

from loadwarden.sdk._async.grpc_server import AsyncAdmissionInterceptor
from loadwarden.sdk._sync.grpc_server import AdmissionInterceptor
from loadwarden.sdk.integrations._admission import SERVER_FAULT_CODES, priority_from_metadata

__all__ = [
    "SERVER_FAULT_CODES",
    "AdmissionInterceptor",
    "AsyncAdmissionInterceptor",
    "priority_from_metadata",
]
