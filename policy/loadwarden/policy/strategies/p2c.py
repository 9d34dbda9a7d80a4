"""Power of d choices: least request over a few candidates drawn by observed capacity.

Each decision draws ``choice_count`` distinct candidates and takes the one with the
lowest ``(active_requests + 1) / effective_weight``, the load it would carry per unit
of weight with this request added. Comparing two random servers instead of all of
them avoids the herd that full least-request sends to whichever server looks idlest,
and still shrinks the maximum load exponentially compared with one random choice
(Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing", IEEE TPDS
12(10), 2001). This is Envoy's ``LEAST_REQUEST`` policy with its default
``choice_count`` 2 and ``active_request_bias`` 1, but for how candidates are drawn.

Envoy draws them uniformly, which assumes servers of about equal speed: where speeds
differ several-fold, pairs of slow servers are common enough to overload them
whatever the comparison (``WeightedSampler``). Here a server is drawn in proportion
to its observed capacity, ``effective_weight * (1 - error_rate)**2 / response_time_ms``
(``_observed_capacity``): its configured share times the successful answers per
millisecond its outcome latency and error EWMAs say it gives. The latency includes
the server's queue, so this is its spare capacity (for one worker, ``1 / latency``
is the service rate less the arrival rate), and a server failing fast does not draw
more traffic for answering fast. Until a server has an outcome or a reported
latency it is drawn as often as the heaviest.

A decision costs O(choice_count): candidates are drawn by index (rejection sampling
against a reference weight), never by walking or shuffling the candidate list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._model import Backend
from ._base import Choice, StrategyBase, StrategyContext
from ._sampling import WeightedSampler, check_choice_count, least_cost, overdue_load


@dataclass(frozen=True, slots=True)
class P2CParams:
    """Parameters of ``p2c``.

    Attributes:
        choice_count: Distinct candidates compared per decision, 2-16.
            With fewer eligible servers than this, all of them are compared.
    """

    choice_count: int = 2

    def __post_init__(self) -> None:
        check_choice_count(self.choice_count)


class P2C(StrategyBase):
    """Least ``(active_requests + 1) / effective_weight`` among ``choice_count`` candidates drawn
    in proportion to their observed capacity.

    The ids of the sampled candidates go back as ``Choice.memo``, so a decision
    can be checked against the alternatives it was compared with.
    """

    name = "p2c"
    Params = P2CParams

    def __init__(self, params: P2CParams, context: StrategyContext) -> None:
        self._choice_count = params.choice_count
        self._rng = context.rng
        self._clock = context.clock
        self._sampler = WeightedSampler()

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        sampled = self._sampler.sample(candidates, self._choice_count, self._rng, _observed_capacity)
        now = self._clock.monotonic()
        # Counting the request being placed keeps weights meaningful when every server is idle;
        # requests long overdue count as more (``overdue_load``).
        costs = [(s.active_requests + 1 + overdue_load(s, now)) / s.effective_weight for s in sampled]
        return Choice(least_cost(sampled, costs, self._rng), False, tuple([s.id for s in sampled]))


def _observed_capacity(server: Backend) -> float | None:
    """What ``server`` is drawn in proportion to: its effective weight times the successful
    answers per ms its outcomes (else its load report) say it gives; None when unknown.

    The latency EWMA averages failures in: counted as taking no time (the worst case, a
    server failing fast), successes take ``latency / ok`` each, so ``ok**2 / latency``
    answers a ms succeed, which falls to 0 as a server fails more, however fast."""
    ok = 1.0 - server.error_rate
    if ok <= 0:
        return 0.0
    latency = server.response_time_ms
    if latency <= 0:
        return None
    return server.effective_weight * ok * ok / latency
