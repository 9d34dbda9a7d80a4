"""Admission-limit algorithms, chosen per pool by name.
May import the standard library and the kernel's own modules only.

Adding an algorithm means one file with a class (``name``, a frozen ``Params`` dataclass,
``adaptive``, ``limit``, ``on_sample``, ``start_from``) and one entry in ``LIMITS``. An adaptive
algorithm starts from the pool's ``max_concurrency``, which must then lie in
its ``[min_limit, max_limit]``, and never grows past it unless ``max_limit`` is
set explicitly in ``limit_params``; only ``fixed`` reads 0 as unlimited.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .._errors import InvalidArgument
from .._registry import Registry
from ._base import LimitAlgorithm, clamp
from .aimd import AimdLimit
from .fixed import FixedLimit
from .gradient2 import Gradient2Limit

LIMITS: Registry[type[Any]] = Registry(
    ("limit algorithm", "algorithms"), "limit_algorithm", "limit_params", [FixedLimit, AimdLimit, Gradient2Limit]
)


def limit_class(name: str, where: str) -> Any:
    """The class registered as ``name``; InvalidArgument naming ``<where>.limit_algorithm`` otherwise."""
    return LIMITS.get_entry(name, where)


def check_limit(name: str, params: Mapping[str, Any], initial_limit: int, where: str) -> None:
    """Validates a limit algorithm, its parameters and its initial limit without building it."""
    _parse(name, params, initial_limit, where)


def build_limit(name: str, params: Mapping[str, Any], initial_limit: int, where: str) -> LimitAlgorithm:
    """Builds the limit algorithm registered as ``name``.

    Args:
        name: Registry name, e.g. ``"aimd"``.
        params: Parameter values by name.
        initial_limit: The pool's ``max_concurrency``, slots; 0 means unlimited
            and is accepted by ``fixed`` only.
        where: Field path of the pool config, used in error messages
            (``<where>.limit_algorithm``, ``<where>.limit_params.<name>``,
            ``<where>.max_concurrency``).

    Raises:
        InvalidArgument: unknown name (the message lists the valid ones), bad
            parameters, or an initial limit the algorithm cannot start from.
    """
    cls, parsed = _parse(name, params, initial_limit, where)
    limit: LimitAlgorithm = cls(parsed, initial_limit)
    return limit


def _parse(name: str, params: Mapping[str, Any], initial_limit: int, where: str) -> tuple[Any, Any]:
    cls, parsed = LIMITS.params(name, params, where)
    field = f"{where}.max_concurrency"
    if initial_limit < 0:
        raise InvalidArgument(field, f"must be >= 0, got {initial_limit}")
    if cls.adaptive:
        if initial_limit == 0:
            raise InvalidArgument(
                field,
                f"limit algorithm {name!r} starts from max_concurrency and needs it > 0; "
                "0 (unlimited) is valid only with 'fixed'",
            )
        if initial_limit < parsed.min_limit:
            raise InvalidArgument(
                field, f"{initial_limit} is below limit_params.min_limit {parsed.min_limit} of {name!r}"
            )
        if initial_limit > parsed.max_limit:
            raise InvalidArgument(
                field, f"{initial_limit} is above limit_params.max_limit {parsed.max_limit} of {name!r}"
            )
        if "max_limit" not in params:
            # max_concurrency is the ceiling operators read in the config; only an explicit
            # limit_params.max_limit lets the algorithm grow past it.
            parsed = dataclasses.replace(parsed, max_limit=initial_limit)
    return cls, parsed


__all__ = [
    "LIMITS",
    "LimitAlgorithm",
    "build_limit",
    "check_limit",
    "clamp",
    "limit_class",
]
