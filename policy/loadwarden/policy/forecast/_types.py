"""The forecast's settings and answer: frozen dataclasses, validated where they are built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._errors import InvalidArgument
from .._validation import shown

MAX_HORIZON_STEPS = 10_000
MAX_SEASONS = 4


def _finite(value: float, field: str, low: float, high: float = math.inf, *, low_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        upper = "" if high == math.inf else f" and <= {high:g}"
        raise InvalidArgument(field, f"must be a finite number {bound}{upper}, got {shown(value)}")


def _count(value: int, field: str, low: int, high: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise InvalidArgument(field, f"must be an integer in [{low}, {high}], got {shown(value)}")


@dataclass(frozen=True, slots=True)
class ForecastSettings:
    """What to forecast from a series, and how the models are judged.

    Attributes:
        step_s: Spacing of the input series, seconds, > 0.
        horizon_s: How far ahead to forecast, seconds, in ``[step_s, 10000 * step_s]``.
            The forecast has one point per step up to ``floor(horizon_s / step_s)`` steps.
        coverage: Nominal share of the prediction interval, in [0.5, 0.99].
        seasons_s: Candidate seasonal periods, seconds; each a whole multiple of
            ``step_s`` of at least two steps, at most four, no repeats.
        min_points: Fewer usable (known) points than this, after a long gap has cut
            the history, means not enough history; in [2, 1000000].
        max_points: Only the newest ``max_points`` input points are read, which bounds
            the cost; ``>= min_points``. The default is 6 weeks at 5-minute steps.
        max_gap_s: Gaps of at most this many seconds are filled by linear
            interpolation; a longer gap cuts the history (see ``forecast``), and a
            series whose newest ``max_gap_s`` are all missing gets no forecast; >= 0.
        backtest_s: Span of the newest history whose points are forecast origins in
            the rolling-origin backtest, seconds, > 0; at most a quarter of the usable
            history is used.
        backtest_origins: Most origins the backtest uses; a longer span is strided
            (and so is one whose origins times steps ahead pass 60000); in [1, 100000].
    """

    step_s: float = 60.0
    horizon_s: float = 900.0
    coverage: float = 0.8
    seasons_s: tuple[float, ...] = (86_400.0, 604_800.0)
    min_points: int = 30
    max_points: int = 12_096
    max_gap_s: float = 900.0
    backtest_s: float = 604_800.0
    backtest_origins: int = 2016

    def __post_init__(self) -> None:
        _finite(self.step_s, "step_s", 0.0, low_open=True)
        _finite(self.horizon_s, "horizon_s", self.step_s, MAX_HORIZON_STEPS * self.step_s)
        _finite(self.coverage, "coverage", 0.5, 0.99)
        seasons = self.seasons_s
        if not isinstance(seasons, tuple | list) or len(seasons) > MAX_SEASONS:
            raise InvalidArgument(
                "seasons_s", f"must be a tuple of at most {MAX_SEASONS} periods, got {shown(seasons)}"
            )
        for i, season in enumerate(seasons):
            _finite(season, "seasons_s", 2 * self.step_s)
            steps = season / self.step_s
            if abs(steps - round(steps)) > 1e-9 * steps:
                raise InvalidArgument(
                    "seasons_s", f"[{i}] = {season:g} s is not a whole multiple of step_s {self.step_s:g} s"
                )
        if len(set(seasons)) != len(seasons):
            raise InvalidArgument("seasons_s", f"has a period twice: {shown(seasons)}")
        object.__setattr__(self, "seasons_s", tuple(float(season) for season in seasons))
        _count(self.min_points, "min_points", 2, 1_000_000)
        _count(self.max_points, "max_points", self.min_points, 10_000_000)
        _finite(self.max_gap_s, "max_gap_s", 0.0)
        _finite(self.backtest_s, "backtest_s", 0.0, low_open=True)
        _count(self.backtest_origins, "backtest_origins", 1, 100_000)

    @property
    def horizon_steps(self) -> int:
        """Steps up to the horizon: ``floor(horizon_s / step_s)``, at least 1."""
        return max(1, math.floor(self.horizon_s / self.step_s + 1e-9))


@dataclass(frozen=True, slots=True)
class Prediction:
    """One forecast point.

    Attributes:
        offset_s: Seconds after the last input point (``step_s``, ``2 * step_s``, ...).
        value: Point forecast; finite, never negative.
        lower: Lower bound of the prediction interval at the settings' ``coverage``;
            ``0 <= lower <= value``.
        upper: Upper bound; ``value <= upper``, finite.
    """

    offset_s: float
    value: float
    lower: float
    upper: float


@dataclass(frozen=True, slots=True)
class ModelScore:
    """How one candidate model did in the rolling-origin backtest.

    Attributes:
        model: ``"seasonal_naive/86400"``, ``"ewma"``, ``"holt"``,
            ``"holt_winters/86400"``, ``"holt_winters/604800"`` (the season in
            seconds, formatted with ``:g``).
        mape: Mean absolute percentage error at the horizon, a fraction (0.12 = 12 %).
            An actual of zero counts 0 when the forecast is zero too, else 1.
        coverage: Share of the backtest's actuals (every step up to the horizon) inside
            the model's prediction interval, measured out of sample: the interval's
            quantiles come from one half of the origins, the share from the other.
        origins: How many forecast origins the backtest used.
        width: Mean width of the prediction interval over the backtest, as a share of
            the forecast (0.2 = the interval spans 20 % of the value).
    """

    model: str
    mape: float
    coverage: float
    origins: int
    width: float = 0.0


@dataclass(frozen=True, slots=True)
class Forecast:
    """The answer of ``forecast()``.

    Attributes:
        model: The chosen model's name; None when there is not enough history.
        reason: ``""`` when a model was chosen; else a sentence that says why none was.
        points: One prediction per step up to the horizon; ``()`` when ``model`` is None.
        scores: Every candidate that could be backtested, best (lowest ``mape``) first;
            ``()`` when none could be.
        history_points: Usable (known) input points the models read.
        note: What was done to the history before the models saw it (gaps filled, a
            long gap that cut it, values clamped), ``""`` when nothing was.
        interval: How the prediction intervals were built: ``"relative"`` (quantiles of
            ``actual / forecast - 1``), ``"absolute"`` (of ``actual - forecast``), or
            ``""`` when there are no points.
    """

    model: str | None
    reason: str
    points: tuple[Prediction, ...]
    scores: tuple[ModelScore, ...]
    history_points: int
    note: str = ""
    interval: str = ""

    def peak(self, within_s: float) -> Prediction | None:
        """The point with the highest value among those with ``offset_s <= within_s``.

        The earliest one wins a tie; None when no point is that near.
        """
        best: Prediction | None = None
        for point in self.points:
            if point.offset_s <= within_s and (best is None or point.value > best.value):
                best = point
        return best
