"""Pricing: the ratio options, the table built from them, and the quota formulas (CONTRACT §3).

The relay builds one :class:`PriceTable` per options change (see :class:`PriceTableCache`), asks
it for the :class:`Price` of each request, and turns token counts into quota with the pure
functions at the bottom. Arithmetic follows new-api (shopspring decimal): every float enters as
the decimal of its shortest ``repr`` (as ``decimal.NewFromFloat`` does), so ``0.075`` is exactly
0.075 and not its binary neighbour, and rounding is half away from zero (``ROUND_HALF_UP``, which
is shopspring's ``Round(0)``), not Python's banker's rounding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fnmatch import translate
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from tollway.billing import defaults
from tollway.options import REGISTRY, OptionError, OptionSpec

T = TypeVar("T")

SELF_USE_MODEL_RATIO = 37.5
"""new-api's ratio for a model without a price when ``SelfUseModeEnabled`` (or the user accepts unset prices)."""
TRUST_FACTOR = 100
"""A balance above this many reservations skips the reservation (new-api's trust shortcut)."""


# ----- options ------------------------------------------------------------------------------
def _is_ratio(value: object) -> bool:
    """A finite number >= 0: what new-api's ``map[string]float64`` holds, minus negative prices."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value >= 0


def _map_validator(name: str, noun: str) -> Callable[[Mapping[str, object]], None]:
    def validate(values: Mapping[str, object]) -> None:
        for key, value in values.items():
            if not _is_ratio(value):
                raise OptionError(f"{name} must be JSON with {noun} >= 0: {key!r} is {value!r}")

    return validate


def _non_negative_int(value: int) -> None:
    if value < 0:
        raise OptionError(f"PreConsumedQuota must be >= 0, got {value}")


MODEL_RATIO: OptionSpec[dict[str, float]] = REGISTRY.declare(
    "ModelRatio", dict(defaults.DEFAULT_MODEL_RATIO), _map_validator("ModelRatio", "ratios")
)
COMPLETION_RATIO: OptionSpec[dict[str, float]] = REGISTRY.declare(
    "CompletionRatio", dict(defaults.DEFAULT_COMPLETION_RATIO), _map_validator("CompletionRatio", "ratios")
)
CACHE_RATIO: OptionSpec[dict[str, float]] = REGISTRY.declare(
    "CacheRatio", dict(defaults.DEFAULT_CACHE_RATIO), _map_validator("CacheRatio", "ratios")
)
MODEL_PRICE: OptionSpec[dict[str, float]] = REGISTRY.declare(
    "ModelPrice", dict(defaults.DEFAULT_MODEL_PRICE), _map_validator("ModelPrice", "prices")
)
GROUP_RATIO: OptionSpec[dict[str, float]] = REGISTRY.declare(
    "GroupRatio", dict(defaults.DEFAULT_GROUP_RATIO), _map_validator("GroupRatio", "ratios")
)
PRE_CONSUMED_QUOTA: OptionSpec[int] = REGISTRY.declare("PreConsumedQuota", 500, _non_negative_int)
"""Tokens reserved when a request sets no ``max_tokens`` (a token count, not quota)."""

_TABLE_SPECS = (MODEL_RATIO, COMPLETION_RATIO, CACHE_RATIO, MODEL_PRICE, GROUP_RATIO)


class OptionReader(Protocol):
    """What :meth:`PriceTable.from_options` needs of :class:`tollway.options.Options`."""

    def get(self, spec: OptionSpec[T]) -> T: ...


# ----- lookups ---------------------------------------------------------------------------------
_COMPILED_RULES = tuple(
    (re.compile(translate(pattern)), float(ratio)) for pattern, ratio in defaults.COMPLETION_FAMILY_RULES
)


@lru_cache(maxsize=4096)
def family_completion_ratio(model: str) -> float | None:
    """The first of ``defaults.COMPLETION_FAMILY_RULES`` matching ``model``, else None.

    Used when the CompletionRatio option has no entry (exact or wildcard) for a model. Cached:
    the rules never change.
    """
    for pattern, ratio in _COMPILED_RULES:
        if pattern.match(model):
            return ratio
    return None


def matching_name(model: str) -> str:
    """The name prices are looked up under: every ChatGPT "GPT" shares one entry (new-api)."""
    if model.startswith("gpt-4-gizmo"):
        return "gpt-4-gizmo-*"
    if model.startswith("gpt-4o-gizmo"):
        return "gpt-4o-gizmo-*"
    return model


# ----- the table ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RatioMap:
    """One option map, ready for lookups: exact keys first, then the longest ``prefix*`` key."""

    exact: Mapping[str, float]
    prefixes: tuple[tuple[str, float], ...]  # (prefix, value), longest prefix first

    @classmethod
    def build(cls, values: Mapping[str, Any]) -> RatioMap:
        exact = {key: float(value) for key, value in values.items()}
        wildcards = [(key[:-1], value) for key, value in exact.items() if key.endswith("*")]
        wildcards.sort(key=lambda item: len(item[0]), reverse=True)
        return cls(MappingProxyType(exact), tuple(wildcards))

    def get(self, name: str) -> float | None:
        value = self.exact.get(name)
        if value is not None:
            return value
        for prefix, wildcard_value in self.prefixes:
            if name.startswith(prefix):
                return wildcard_value
        return None


@dataclass(frozen=True)
class Price:
    """Everything the relay needs to meter one request (and to log how it was priced)."""

    model_ratio: float  # 0 when the model is only priced per call
    completion_ratio: float
    cache_ratio: float
    group_ratio: float
    model_price: float | None  # USD per call; None for token-billed models
    quota_per_unit: float

    @property
    def per_call(self) -> bool:
        return self.model_price is not None


@dataclass(frozen=True)
class PriceTable:
    """The pricing options parsed once, so a request's price is a few dict lookups."""

    model_ratios: RatioMap
    completion_ratios: RatioMap
    cache_ratios: RatioMap
    model_prices: RatioMap
    group_ratios: Mapping[str, float]

    @classmethod
    def build(
        cls,
        *,
        model_ratio: Mapping[str, Any] | None = None,
        completion_ratio: Mapping[str, Any] | None = None,
        cache_ratio: Mapping[str, Any] | None = None,
        model_price: Mapping[str, Any] | None = None,
        group_ratio: Mapping[str, Any] | None = None,
    ) -> PriceTable:
        """A table from explicit maps; a map left out is the built-in default."""
        groups = defaults.DEFAULT_GROUP_RATIO if group_ratio is None else group_ratio
        return cls(
            RatioMap.build(defaults.DEFAULT_MODEL_RATIO if model_ratio is None else model_ratio),
            RatioMap.build(
                defaults.DEFAULT_COMPLETION_RATIO if completion_ratio is None else completion_ratio
            ),
            RatioMap.build(defaults.DEFAULT_CACHE_RATIO if cache_ratio is None else cache_ratio),
            RatioMap.build(defaults.DEFAULT_MODEL_PRICE if model_price is None else model_price),
            MappingProxyType({group: float(ratio) for group, ratio in groups.items()}),
        )

    @classmethod
    def from_options(cls, options: OptionReader) -> PriceTable:
        return cls.build(
            model_ratio=options.get(MODEL_RATIO),
            completion_ratio=options.get(COMPLETION_RATIO),
            cache_ratio=options.get(CACHE_RATIO),
            model_price=options.get(MODEL_PRICE),
            group_ratio=options.get(GROUP_RATIO),
        )

    def model_ratio(self, model: str) -> float | None:
        """None: the model has no ratio (it may still have a per-call price)."""
        return self.model_ratios.get(matching_name(model))

    def completion_ratio(self, model: str) -> float:
        """The option's entry, else the family rule, else 1.

        The option comes first (unlike new-api, whose hard-coded rules win) so an operator can
        always correct a price without waiting for a release.
        """
        name = matching_name(model)
        configured = self.completion_ratios.get(name)
        if configured is not None:
            return configured
        family = family_completion_ratio(name)
        return 1.0 if family is None else family

    def cache_ratio(self, model: str) -> float:
        value = self.cache_ratios.get(matching_name(model))
        return 1.0 if value is None else value

    def model_price(self, model: str) -> float | None:
        return self.model_prices.get(matching_name(model))

    def group_ratio(self, group: str) -> float:
        return self.group_ratios.get(group, 1.0)

    def price_for(
        self, model: str, group: str, quota_per_unit: float, *, self_use_mode: bool = False
    ) -> Price | None:
        """The price of one request, or None when the model is unpriced (``model_price_error``).

        A per-call price wins over a ratio. Pass ``self_use_mode`` when ``SelfUseModeEnabled`` is
        on or the user's ``accept_unset_model_ratio_model`` setting is true: an unpriced model
        then costs ratio 37.5, as in new-api.
        """
        name = matching_name(model)
        price = self.model_prices.get(name)
        ratio = self.model_ratios.get(name)
        if price is None and ratio is None:
            if not self_use_mode:
                return None
            ratio = SELF_USE_MODEL_RATIO
        return Price(
            model_ratio=0.0 if ratio is None else ratio,
            completion_ratio=self.completion_ratio(name),
            cache_ratio=self.cache_ratio(name),
            group_ratio=self.group_ratio(group),
            model_price=price,
            quota_per_unit=quota_per_unit,
        )


class PriceTableCache:
    """Rebuilds the table only when one of its options was replaced.

    ``Options`` stores a new object for every loaded or saved value, so identity tells whether
    anything changed; holding the objects keeps their ids from being reused.
    """

    def __init__(self) -> None:
        self._sources: tuple[object, ...] = ()
        self._table: PriceTable | None = None

    def get(self, options: OptionReader) -> PriceTable:
        sources = tuple(options.get(spec) for spec in _TABLE_SPECS)
        table = self._table
        if table is None or any(new is not old for new, old in zip(sources, self._sources, strict=True)):
            table = PriceTable.from_options(options)
            self._sources, self._table = sources, table
        return table


# ----- quota ----------------------------------------------------------------------------------
def _decimal(value: float) -> Decimal:
    """The decimal a person reads in the option (shortest repr), as shopspring's NewFromFloat."""
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _round(value: Decimal) -> int:
    """Half away from zero, as shopspring's ``Round(0)``."""
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def _per_call_quota(price: Price, model_price: float) -> int:
    return _round(_decimal(model_price) * _decimal(price.quota_per_unit) * _decimal(price.group_ratio))


def text_quota(price: Price, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
    """The cost of a finished request (CONTRACT §3).

    ``round((prompt − cached + cached × cache_ratio + completion × completion_ratio) × model_ratio ×
    group_ratio)``, at least 1 when ``model_ratio × group_ratio`` is not 0; per-call models cost
    ``round(model_price × quota_per_unit × group_ratio)``. Upstream usage is not trusted to be
    sane: negative counts count as 0 and cached tokens never exceed the prompt. ``prompt_tokens``
    includes the cached tokens (OpenAI usage); Claude-format usage must be converted first.
    Whether a reply without any tokens is charged is the caller's decision (no answer: no charge).
    """
    if price.model_price is not None:
        return _per_call_quota(price, price.model_price)
    prompt = max(prompt_tokens, 0)
    cached = min(max(cached_tokens, 0), prompt)
    tokens = (
        Decimal(prompt - cached)
        + Decimal(cached) * _decimal(price.cache_ratio)
        + Decimal(max(completion_tokens, 0)) * _decimal(price.completion_ratio)
    )
    ratio = _decimal(price.model_ratio) * _decimal(price.group_ratio)
    quota = _round(tokens * ratio)
    if ratio != 0 and quota <= 0:
        return 1
    return quota


def reserve_quota(
    price: Price, prompt_tokens: int | Callable[[], int], max_tokens: int | None, pre_consumed_tokens: int
) -> int:
    """What to reserve before calling the upstream (new-api ``preConsumeQuota``).

    ``(prompt + max_tokens) × model_ratio × group_ratio`` when the request sets ``max_tokens``
    (the caller passes the larger of ``max_tokens`` and ``max_completion_tokens``), else
    ``PreConsumedQuota`` tokens at the same ratio; the completion ratio is not applied. Per-call
    models reserve their full price. The trust shortcut (reserve nothing for a rich user and
    token) is the caller's step: :func:`apply_trust_shortcut`. ``prompt_tokens`` may be a callable,
    called only when the prompt counts (counting is costly).
    """
    if price.model_price is not None:
        return _per_call_quota(price, price.model_price)
    if max_tokens is not None and max_tokens > 0:
        prompt = prompt_tokens() if callable(prompt_tokens) else prompt_tokens
        pre_tokens = max(prompt, 0) + max_tokens
    else:
        pre_tokens = max(pre_consumed_tokens, 0)
    return _round(Decimal(pre_tokens) * _decimal(price.model_ratio) * _decimal(price.group_ratio))


def apply_trust_shortcut(reserve: int, user_quota: int, token_remaining: int | None) -> int:
    """new-api's trust rule: reserve 0 when the user holds more than 100 reservations and the token
    is unlimited (``token_remaining`` None) or also holds more than 100; else ``reserve``."""
    threshold = TRUST_FACTOR * reserve
    if user_quota > threshold and (token_remaining is None or token_remaining > threshold):
        return 0
    return reserve
