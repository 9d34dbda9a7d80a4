"""ShouldRateLimit's request bounds: a request within the message size cap could carry tens of
thousands of descriptors, each costing event-loop time (helper-38's fuzz finding)."""

from __future__ import annotations

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.service.ratelimit.v3 import rls_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs

from loadwarden.policy import InvalidArgument
from loadwarden.server.mesh._rls import MAX_DESCRIPTORS, MAX_ENTRIES, descriptors_of

Entry = ratelimit_pb2.RateLimitDescriptor.Entry


def request(descriptors: int, entries: int = 1) -> object:
    one = ratelimit_pb2.RateLimitDescriptor(entries=[Entry(key=f"k{i}", value="v") for i in range(entries)])
    return rls_pb2.RateLimitRequest(domain="edge", descriptors=[one] * descriptors)


def test_requests_at_the_bounds_are_taken() -> None:
    assert len(descriptors_of(request(MAX_DESCRIPTORS))) == MAX_DESCRIPTORS
    assert len(descriptors_of(request(1, MAX_ENTRIES))[0].entries) == MAX_ENTRIES


@pytest.mark.parametrize(
    ("descriptors", "entries", "field"),
    [(MAX_DESCRIPTORS + 1, 1, "descriptors"), (2, MAX_ENTRIES + 1, "descriptors[0].entries")],
)
def test_past_the_bounds_is_invalid_argument_naming_the_field(descriptors: int, entries: int, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        descriptors_of(request(descriptors, entries))
    assert err.value.field == field
