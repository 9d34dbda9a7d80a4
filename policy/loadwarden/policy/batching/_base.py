"""The batch-controller interface: what size an operation's next batch should be."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol


class BatchController(Protocol):
    """Proposes a batch size; the operation applies cooldown, minimum step and bounds.

    A controller class has a registry `name` (the operation's `mode`), a frozen `Params`
    dataclass, and is built as `cls(params, start)` with the operation's current size.
    """

    name: ClassVar[str]
    Params: ClassVar[type[Any]]
    # True when the controller needs a load score; without one the operation answers its default.
    needs_load: ClassVar[bool]

    def target(self, load_score: float | None, described: str = "") -> tuple[int, str]:
        """The size this controller wants now and why (``load_score`` is None only when not needed).

        ``described`` names the load in the reason (``"load 42.0"`` when empty); a forecast
        reads ``"forecast load 86.0 in 240 s"``.
        """
        ...

    def observe(self, batch_size: int, duration_ms: float, success: bool) -> None:
        """Learns from one finished batch (ReportBatch)."""
        ...
