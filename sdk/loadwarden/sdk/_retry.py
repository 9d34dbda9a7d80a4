"""Client-side retries: full-jitter backoff inside the call's deadline, capped by a budget.

This is the SDK's one retry layer: the clients' `_call` wraps each RPC in
`Retrier.call`/`call_async`, and nothing below it (gRPC service-config retries)
or above it retries again, so retries never multiply across layers.

A call makes attempts until one succeeds or the error is final. An error is final
when `retryable` rejects it (by default only transport failures are retried:
UNAVAILABLE without a service reason, and DEADLINE_EXCEEDED), when the attempts
are used up, when less than `MIN_ATTEMPT_S` is left before the deadline, or when
the retry budget has no token. The final error is re-raised as it was raised.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from loadwarden.sdk._errors import DeadlineExceededError, is_transport_failure

T = TypeVar("T")

# Least time an attempt may be given, seconds: with less left before the deadline the
# call stops instead of starting an attempt (or a sleep) that could only time out.
MIN_ATTEMPT_S = 0.001

# Budget tokens are integers in millionths of a retry, so deposits of `ratio` and
# withdrawals of one retry add up exactly (no float drift at any call count).
_TOKEN_SCALE = 1_000_000
# The budget window is kept as this many slices; a deposit or withdrawal counts for
# between (slices - 1) / slices and 1 window, then expires with its slice.
_WINDOW_SLICES = 10


@dataclass(frozen=True)
class RetryConfig:
    """How a client retries a failed call.

    Attributes:
        max_attempts: Attempts per call, the first included; >= 1 (1 = no retries).
        initial_backoff_s: Cap of the sleep before the first retry, seconds; > 0.
        max_backoff_s: Largest cap of any sleep, seconds; >= `initial_backoff_s`.
        multiplier: Growth of the cap per retry; >= 1. Before retry n (from 0) the
            sleep is uniform in [0, min(max_backoff_s, initial_backoff_s * multiplier**n)].
        budget_ratio: Retries allowed per recent call, in [0, 1] (0.2 = one retry per
            five calls) ...
        budget_min_per_s: ... plus this many retries per second whatever the call
            rate, so a client making few calls can still retry; >= 0.
        budget_window_s: How long a call or a retry counts as recent, seconds; > 0.
    """

    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    budget_ratio: float = 0.2
    budget_min_per_s: float = 1.0
    budget_window_s: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if not (math.isfinite(self.initial_backoff_s) and self.initial_backoff_s > 0):
            raise ValueError(f"initial_backoff_s must be > 0 seconds, got {self.initial_backoff_s!r}")
        if not (math.isfinite(self.max_backoff_s) and self.max_backoff_s >= self.initial_backoff_s):
            raise ValueError(
                f"max_backoff_s must be >= initial_backoff_s ({self.initial_backoff_s!r}), got {self.max_backoff_s!r}"
            )
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        _check_budget("budget_", self.budget_ratio, self.budget_min_per_s, self.budget_window_s)


def _check_budget(prefix: str, ratio: float, min_per_s: float, window_s: float) -> None:
    if not 0 <= ratio <= 1:  # also rejects NaN
        raise ValueError(f"{prefix}ratio must be in [0, 1], got {ratio!r}")
    if not (math.isfinite(min_per_s) and min_per_s >= 0):
        raise ValueError(f"{prefix}min_per_s must be >= 0 retries per second, got {min_per_s!r}")
    if not (math.isfinite(window_s) and window_s > 0):
        raise ValueError(f"{prefix}window_s must be > 0 seconds, got {window_s!r}")


class RetryBudget:
    """Caps retries at a share of recent calls plus a floor (Finagle's RetryBudget).

    Each call deposits `ratio` of a token, each retry withdraws one whole token, and
    both expire about `window_s` after they are made. A constant reserve of
    `min_per_s * window_s` tokens sits on top. So while the service fails every call,
    the calls made within one window retry at most
    ``ratio * calls + min_per_s * window_s`` times, whatever their number of attempts:
    retries add at most `ratio` load rather than multiplying it. As calls keep coming
    or time passes, spent tokens expire and the budget refills.

    Thread-safe; one budget may be shared by several retriers (e.g. per channel).
    """

    def __init__(
        self,
        ratio: float,
        min_per_s: float,
        window_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Creates an empty budget holding only its reserve.

        Args:
            ratio: Tokens deposited per call, in [0, 1].
            min_per_s: Retries per second allowed whatever the call rate, >= 0.
            window_s: How long a deposit or a withdrawal counts, seconds; > 0.
            clock: Monotonic time in seconds.

        Raises:
            ValueError: A parameter is out of range; the message starts with its name.
        """
        _check_budget("", ratio, min_per_s, window_s)
        self._deposit = round(ratio * _TOKEN_SCALE)
        self._reserve = round(min_per_s * window_s * _TOKEN_SCALE)
        self._slice_s = window_s / _WINDOW_SLICES
        self._clock = clock
        self._lock = threading.Lock()
        # Slot i holds [slice index, calls, retries] of the latest slice with index % slices == i.
        self._slots = [[-1, 0, 0] for _ in range(_WINDOW_SLICES)]
        self._refused = 0

    def record_call(self) -> None:
        """Deposits one call's share of a retry."""
        with self._lock:
            self._slot(self._clock())[1] += 1

    def try_spend(self) -> bool:
        """Withdraws one retry if the budget holds it.

        Returns:
            True when the retry may go ahead (its token is spent); False when the
            budget is exhausted and the caller must not retry.
        """
        with self._lock:
            now = self._clock()
            if self._balance(now) < _TOKEN_SCALE:
                self._refused += 1
                return False
            self._slot(now)[2] += 1
            return True

    def stats(self) -> dict[str, int]:
        """Returns the budget's state now.

        Returns:
            ``balance``: retries allowed right now; ``window_calls`` and
            ``window_retries``: calls and retries still counting; ``refused``: retries
            refused since the budget was made.
        """
        with self._lock:
            now = self._clock()
            calls, retries = self._window(now)
            return {
                "balance": max(0, self._balance(now)) // _TOKEN_SCALE,
                "window_calls": calls,
                "window_retries": retries,
                "refused": self._refused,
            }

    def _slot(self, now: float) -> list[int]:
        index = math.floor(now / self._slice_s)
        slot = self._slots[index % _WINDOW_SLICES]
        if slot[0] != index:
            slot[:] = [index, 0, 0]
        return slot

    def _window(self, now: float) -> tuple[int, int]:
        index = math.floor(now / self._slice_s)
        calls = retries = 0
        for slot_index, slot_calls, slot_retries in self._slots:
            if index - _WINDOW_SLICES < slot_index <= index:
                calls += slot_calls
                retries += slot_retries
        return calls, retries

    def _balance(self, now: float) -> int:
        calls, retries = self._window(now)
        return self._reserve + calls * self._deposit - retries * _TOKEN_SCALE


class Retrier:
    """Runs a call's attempts: full-jitter backoff, a deadline, a retry budget.

    One retrier serves a client and all its threads and tasks; it keeps no state
    per call between calls.
    """

    def __init__(
        self,
        config: RetryConfig = RetryConfig(),  # frozen, so a shared default is safe
        *,
        budget: RetryBudget | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
        async_sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        """Creates a retrier.

        Args:
            config: Attempts, backoff and (when `budget` is None) budget settings.
            budget: Budget to draw retries from, e.g. one shared per channel; by
                default a new one made from `config` on `clock`.
            rng: Source of the backoff jitter; seed it for reproducible sleeps.
            clock: Monotonic time in seconds; `deadline` is an instant of it.
            sleep: Blocks for a number of seconds (`call`).
            async_sleep: Waits for a number of seconds (`call_async`).
        """
        self._config = config
        self._budget = (
            budget
            if budget is not None
            else RetryBudget(config.budget_ratio, config.budget_min_per_s, config.budget_window_s, clock=clock)
        )
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._lock = threading.Lock()
        self._counts = {"calls": 0, "attempts": 0, "retries": 0, "budget_exhausted": 0}

    @property
    def budget(self) -> RetryBudget:
        """The budget this retrier draws retries from."""
        return self._budget

    def call(
        self,
        attempt: Callable[[float], T],
        *,
        deadline: float,
        retryable: Callable[[BaseException], bool] = is_transport_failure,
    ) -> T:
        """Calls `attempt` until it returns, retrying the failures `retryable` accepts.

        Args:
            attempt: Makes one try; gets its timeout, the seconds left until `deadline`.
            deadline: Instant of `clock` after which no attempt or sleep may end.
            retryable: Tells whether an error may be retried.

        Returns:
            What the first successful attempt returned.

        Raises:
            BaseException: The last attempt's error, unchanged, when it is not
                retryable or no further attempt is allowed.
            DeadlineExceededError: The deadline had passed before the first attempt.
        """
        run = self._start(deadline, retryable)
        try:
            return run.attempt(attempt)  # the common case pays for no retry machinery
        except BaseException as exc:
            if not run.may_retry(exc):
                raise
            first = _Replay(exc)
        retrying = Retrying(sleep=self._sleep, **run.policy())
        # Bound to a T-typed name: tenacity's `Retrying.__call__` cannot solve T from a generic method.
        attempt_after: Callable[[_Replay, Callable[[float], T]], T] = run.attempt_after
        return retrying(attempt_after, first, attempt)

    async def call_async(
        self,
        attempt: Callable[[float], Awaitable[T]],
        *,
        deadline: float,
        retryable: Callable[[BaseException], bool] = is_transport_failure,
    ) -> T:
        """The coroutine form of `call`: awaits `attempt` and sleeps with `async_sleep`."""
        run = self._start(deadline, retryable)
        try:
            return await run.attempt_async(attempt)  # the common case pays for no retry machinery
        except BaseException as exc:
            if not run.may_retry(exc):
                raise
            first = _Replay(exc)
        # A fresh AsyncRetrying per call: tenacity keeps per-run state on the object,
        # which coroutines on one thread would otherwise share.
        retrying = AsyncRetrying(sleep=self._async_sleep, **run.policy())
        return await retrying(run.attempt_after_async, first, attempt)

    def stats(self) -> dict[str, Any]:
        """Returns counters since the retrier was made.

        Returns:
            ``calls``, ``attempts`` (first tries included), ``retries``,
            ``budget_exhausted`` (calls that wanted a retry the budget refused), and
            ``budget``: the budget's own `RetryBudget.stats`.
        """
        with self._lock:
            counts: dict[str, Any] = dict(self._counts)
        counts["budget"] = self._budget.stats()
        return counts

    def _start(self, deadline: float, retryable: Callable[[BaseException], bool]) -> _Run:
        if deadline - self._clock() < MIN_ATTEMPT_S:
            raise DeadlineExceededError("deadline passed before the first attempt")
        self._budget.record_call()
        self._count("calls")
        return _Run(
            deadline,
            retryable,
            config=self._config,
            budget=self._budget,
            rng=self._rng,
            clock=self._clock,
            count=self._count,
        )

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1


class _Replay:
    """The first attempt's error, handed to tenacity as its first attempt.

    The first attempt runs outside tenacity (building its machinery costs tens of
    microseconds per call); only a call that will retry enters it, and tenacity then
    sees that failure as attempt 1, so backoff, stop and budget rules are unchanged.
    """

    __slots__ = ("error", "pending")

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.pending = True


class _Run:
    """One call's state; tenacity's retry, wait, stop and before_sleep hooks read it."""

    def __init__(
        self,
        deadline: float,
        retryable: Callable[[BaseException], bool],
        *,
        config: RetryConfig,
        budget: RetryBudget,
        rng: random.Random,
        clock: Callable[[], float],
        count: Callable[[str], None],
    ) -> None:
        self._config = config
        self._stop_after_attempts = stop_after_attempt(config.max_attempts)
        self._budget = budget
        self._rng = rng
        self._clock = clock
        self._count = count  # adds one to the retrier's counter of that name
        self._deadline = deadline
        self._retryable = retryable
        self._started = 0.0
        self._timeout_s = 0.0
        self._last_error: BaseException | None = None
        self._final = False  # the last sleep was clipped: the attempt after it is the last

    def policy(self) -> dict[str, Any]:
        return {
            "retry": retry_if_exception(self._should_retry),
            "wait": self._backoff_s,
            "stop": self._stop,
            "before_sleep": self._before_sleep,
            "reraise": True,  # the last error itself, never tenacity's RetryError
        }

    def attempt(self, fn: Callable[[float], T]) -> T:
        return fn(self._begin_attempt())

    async def attempt_async(self, fn: Callable[[float], Awaitable[T]]) -> T:
        return await fn(self._begin_attempt())

    def may_retry(self, exc: BaseException) -> bool:
        """Whether the first attempt's failure is worth entering the retry loop for."""
        return self._config.max_attempts > 1 and self._should_retry(exc)

    def attempt_after(self, first: _Replay, fn: Callable[[float], T]) -> T:
        if first.pending:
            first.pending = False
            raise first.error
        return fn(self._begin_attempt())

    async def attempt_after_async(self, first: _Replay, fn: Callable[[float], Awaitable[T]]) -> T:
        if first.pending:
            first.pending = False
            raise first.error
        return await fn(self._begin_attempt())

    def _begin_attempt(self) -> float:
        now = self._clock()
        timeout_s = self._deadline - now
        if timeout_s <= 0 and self._last_error is not None:
            # The sleep overran the time it left for this attempt: give up with the last error.
            raise self._last_error
        self._started, self._timeout_s = now, timeout_s
        self._count("attempts")
        return timeout_s

    def _should_retry(self, exc: BaseException) -> bool:
        self._last_error = exc
        if self._final or not self._retryable(exc):
            return False
        now = self._clock()
        if self._deadline - now < MIN_ATTEMPT_S:
            return False
        # An attempt is given all the time left, so a DEADLINE_EXCEEDED that took its
        # whole timeout is the call's own deadline; only an early one (e.g. a proxy's
        # shorter timeout) leaves time worth retrying in.
        return not (isinstance(exc, DeadlineExceededError) and now - self._started >= self._timeout_s - MIN_ATTEMPT_S)

    def _backoff_s(self, retry_state: RetryCallState) -> float:
        # tenacity's wait_random_exponential draws from the global `random`; this one
        # uses the injected rng. Retry n (from 0) follows attempt n + 1.
        config = self._config
        n = retry_state.attempt_number - 1
        try:
            cap_s = min(config.max_backoff_s, config.initial_backoff_s * config.multiplier**n)
        except OverflowError:
            cap_s = config.max_backoff_s
        sleep_s = self._rng.uniform(0.0, cap_s)
        # Clipped so the next attempt still starts with at least MIN_ATTEMPT_S left; that
        # attempt then runs to the deadline and is the last.
        latest_s = self._deadline - self._clock() - MIN_ATTEMPT_S
        if sleep_s >= latest_s:
            self._final = True
            return max(0.0, latest_s)
        return sleep_s

    def _stop(self, retry_state: RetryCallState) -> bool:
        # Evaluated in order and only while the previous says go on, so a budget
        # token is spent only for a retry that will happen.
        return self._stop_after_attempts(retry_state) or self._budget_refuses()

    def _budget_refuses(self) -> bool:
        if self._budget.try_spend():
            return False
        self._count("budget_exhausted")
        return True

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        self._count("retries")
