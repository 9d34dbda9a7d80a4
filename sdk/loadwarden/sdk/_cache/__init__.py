"""The store-independent parts of `loadwarden.sdk.cache`: keys, values, the in-process LRU, metrics.

`AsyncCache` (`_async/cache.py`) is the source of the two caches; `Cache` is generated
from it. What the two flavours share without an `await` lives here.
"""
