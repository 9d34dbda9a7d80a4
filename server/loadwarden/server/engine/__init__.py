"""The decision engine: the kernel's pools in an asyncio service (admission queues, leases,
pending decisions, the host monitor). May import loadwarden.policy and server._errors; no grpc."""
