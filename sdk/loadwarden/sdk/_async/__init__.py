"""One flavour of the SDK's I/O code: `_async` (asyncio) is the source, `_sync` is generated (scripts/unasync.py)."""
