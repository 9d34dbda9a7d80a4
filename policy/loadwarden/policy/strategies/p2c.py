"""Power of d choices: least request over a few random candidates.

Each decision samples ``choice_count`` distinct candidates uniformly at random
and takes the one with the lowest ``(active_requests + 1) / effective_weight``,
the load it would carry per unit of weight with this request added. Comparing two
random servers instead of all of them avoids the herd that full least-request
sends to whichever server looks idlest, and still shrinks the maximum load
exponentially compared with one random choice (Mitzenmacher, "The Power of Two
Choices in Randomized Load Balancing", IEEE TPDS 12(10), 2001). This is Envoy's
``LEAST_REQUEST`` policy with its default ``choice_count`` 2 and
``active_request_bias`` 1.

A decision costs O(choice_count): the sample is drawn by index (Floyd's
algorithm), never by walking or shuffling the candidate list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._model import Backend
from ._base import Choice, StrategyBase, StrategyContext
from ._sampling import check_choice_count, least_cost, overdue_load, sample_distinct


@dataclass(frozen=True, slots=True)
class P2CParams:
    """Parameters of ``p2c``.

    Attributes:
        choice_count: Distinct random candidates compared per decision, 2-16.
            With fewer eligible servers than this, all of them are compared.
    """

    choice_count: int = 2

    def __post_init__(self) -> None:
        check_choice_count(self.choice_count)


class P2C(StrategyBase):
    """Least ``(active_requests + 1) / effective_weight`` among ``choice_count`` random candidates.

    The ids of the sampled candidates go back as ``Choice.memo``, so a decision
    can be checked against the alternatives it was compared with.
    """

    name = "p2c"
    Params = P2CParams

    def __init__(self, params: P2CParams, context: StrategyContext) -> None:
        self._choice_count = params.choice_count
        self._rng = context.rng
        self._clock = context.clock

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        sampled = sample_distinct(candidates, self._choice_count, self._rng)
        now = self._clock.monotonic()
        # Counting the request being placed keeps weights meaningful when every server is idle;
        # requests long overdue count as more (``overdue_load``).
        costs = [(s.active_requests + 1 + overdue_load(s, now)) / s.effective_weight for s in sampled]
        return Choice(least_cost(sampled, costs, self._rng), False, tuple([s.id for s in sampled]))
