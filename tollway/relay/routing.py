"""Channel routing: which channel and key serve a (group, model), and whether a failure is retried.

Everything here runs on every request, so :class:`AbilityIndex` precomputes the priority tiers and
their cumulative weights once per cache rebuild; a selection is then a dict lookup and a bisect.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from itertools import accumulate

from tollway.billing.pricing import matching_name
from tollway.db.models.channel import CHANNEL_ENABLED
from tollway.providers.base import UpstreamFailure
from tollway.relay.channel import TYPE_ANTHROPIC, ChannelSnapshot

WEIGHT_SMOOTHING = 10
"""new-api adds 10 to every weight so that weight-0 channels still get some traffic."""


def effective_weight(channel: ChannelSnapshot) -> int:
    """``weight + 10``; a negative weight counts as 0 (new-api's weight is unsigned)."""
    return max(channel.weight, 0) + WEIGHT_SMOOTHING


@dataclass(frozen=True)
class Tier:
    """Channels of one priority for one (group, model), ordered by id, with cumulative weights."""

    priority: int
    channels: tuple[ChannelSnapshot, ...]
    cumulative: tuple[int, ...]

    @classmethod
    def build(cls, priority: int, channels: Iterable[ChannelSnapshot]) -> Tier:
        ordered = tuple(sorted(channels, key=lambda c: c.id))
        return cls(priority, ordered, tuple(accumulate(effective_weight(c) for c in ordered)))

    def pick(self, rng: random.Random) -> ChannelSnapshot:
        """Weighted-random pick over the whole tier (the common case: nothing tried yet)."""
        if len(self.channels) == 1:
            return self.channels[0]
        point = rng.random() * self.cumulative[-1]
        return self.channels[bisect_right(self.cumulative, point)]


def _pick_weighted(channels: list[ChannelSnapshot], rng: random.Random) -> ChannelSnapshot:
    if len(channels) == 1:
        return channels[0]
    cumulative = list(accumulate(effective_weight(c) for c in channels))
    return channels[bisect_right(cumulative, rng.random() * cumulative[-1])]


class AbilityIndex:
    """(group, model) → priority tiers, highest first, built from the enabled channels.

    Models are keyed by :func:`matching_name`, so every ChatGPT "GPT" (``gpt-4-gizmo-…``) routes to
    the channels that list ``gpt-4-gizmo-*``, as new-api's distributor does.
    """

    def __init__(self, channels: Iterable[ChannelSnapshot]) -> None:
        grouped: dict[tuple[str, str], dict[int, ChannelSnapshot]] = {}
        models: dict[str, set[str]] = {}
        for channel in channels:
            if channel.status != CHANNEL_ENABLED:
                continue
            for group in channel.groups:
                names = models.setdefault(group, set())
                for model in channel.models:
                    names.add(model)
                    grouped.setdefault((group, matching_name(model)), {})[channel.id] = channel
        self._tiers: dict[tuple[str, str], tuple[Tier, ...]] = {
            key: self._build_tiers(by_id.values()) for key, by_id in grouped.items()
        }
        self._models: dict[str, tuple[str, ...]] = {g: tuple(sorted(n)) for g, n in models.items() if n}

    @staticmethod
    def _build_tiers(channels: Iterable[ChannelSnapshot]) -> tuple[Tier, ...]:
        by_priority: dict[int, list[ChannelSnapshot]] = {}
        for channel in channels:
            by_priority.setdefault(channel.priority, []).append(channel)
        return tuple(Tier.build(p, by_priority[p]) for p in sorted(by_priority, reverse=True))

    def tiers(self, group: str, model: str) -> tuple[Tier, ...]:
        """The precomputed tiers (the selector's hot path); empty when nothing serves the pair."""
        return self._tiers.get((group, matching_name(model)), ())

    def channels_for(self, group: str, model: str) -> list[list[ChannelSnapshot]]:
        """Candidate channels by priority tier, highest priority first."""
        return [list(tier.channels) for tier in self.tiers(group, model)]

    def models_for_group(self, group: str) -> list[str]:
        """Distinct model names the group can use, sorted (``GET /v1/models``)."""
        return list(self._models.get(group, ()))

    def groups(self) -> list[str]:
        """Groups that have at least one model."""
        return sorted(self._models)


class ChannelSelector:
    """CONTRACT §4 selection: highest tier first, weighted random, never a channel already tried.

    Unlike new-api (attempt *i* → tier *i*, repeats allowed), a tier is left only once every one of
    its channels was tried in this request. ``index`` is replaced when the channel cache is rebuilt.
    """

    def __init__(self, index: AbilityIndex, rng: random.Random | None = None) -> None:
        self.index = index
        self._rng = rng or random.Random()

    def select(self, group: str, model: str, tried: Collection[int] = ()) -> ChannelSnapshot | None:
        for tier in self.index.tiers(group, model):
            if not tried:
                return tier.pick(self._rng)
            remaining = [c for c in tier.channels if c.id not in tried]
            if not remaining:
                continue
            if len(remaining) == len(tier.channels):
                return tier.pick(self._rng)
            return _pick_weighted(remaining, self._rng)
        return None


class KeyPicker:
    """Chooses the key of a multi-key channel: random, or round-robin per channel (``polling``).

    The round-robin position lives in this object (per process, like VL/new-api) and restarts at 0
    when the channel's keys change.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._cursors: dict[int, tuple[tuple[str, ...], int]] = {}

    def pick(self, channel: ChannelSnapshot, exclude: Collection[int] = ()) -> tuple[int, str]:
        """``(index, key)``; ``exclude`` holds indexes of keys that already failed in this request.

        A channel without keys yields ``(0, "")``. Raises :class:`LookupError` when every key is
        excluded, so a failed key is never silently reused.
        """
        keys = channel.keys
        count = len(keys)
        if count <= 1:
            if 0 in exclude:
                raise LookupError(f"channel {channel.id}: its only key was excluded")
            return 0, keys[0] if keys else ""
        if channel.multi_key_mode == "polling":
            return self._poll(channel.id, keys, exclude)
        if not exclude:
            index = self._rng.randrange(count)
            return index, keys[index]
        allowed = [i for i in range(count) if i not in exclude]
        if not allowed:
            raise LookupError(f"channel {channel.id}: every key was excluded")
        index = self._rng.choice(allowed)
        return index, keys[index]

    def _poll(self, channel_id: int, keys: tuple[str, ...], exclude: Collection[int]) -> tuple[int, str]:
        saved = self._cursors.get(channel_id)
        start = saved[1] if saved is not None and saved[0] == keys else 0
        count = len(keys)
        for step in range(count):
            index = (start + step) % count
            if index not in exclude:
                self._cursors[channel_id] = (keys, (index + 1) % count)
                return index, keys[index]
        raise LookupError(f"channel {channel_id}: every key was excluded")

    def forget(self, channel_id: int) -> None:
        """Drop the round-robin position of a deleted channel."""
        self._cursors.pop(channel_id, None)


def should_retry(
    failure: UpstreamFailure | None,
    *,
    status: int,
    local: bool,
    pinned: bool,
    channel_type: int,
    timed_out: bool = False,
) -> bool:
    """Whether another channel may be tried after a failed attempt (new-api ``shouldRetry``).

    ``status`` is the status after :func:`map_status` (new-api maps before deciding), 0 when no
    answer arrived. ``failure`` does not change the decision; it is accepted so callers can pass
    what they have. Deviation from new-api (CONTRACT §4): Tollway's own timeout and connection
    errors are retried. An upstream's 504/524 is not — the upstream may have done (and billed)
    the work. The retries-left budget is the caller's.
    """
    if local or pinned:
        return False
    if timed_out or status == 0:
        return True
    if status in (429, 307):
        return True
    if 500 <= status < 600:
        return status not in (504, 524)
    if status == 400:
        return channel_type == TYPE_ANTHROPIC
    if status == 408:
        return False
    return not 200 <= status < 300


def map_status(channel: ChannelSnapshot, status: int) -> int:
    """Apply the channel's ``status_code_mapping`` to an error status (new-api ``ResetStatusCode``).

    Successes are never rewritten; a non-numeric or out-of-range target is ignored.
    """
    if not channel.status_code_mapping or 200 <= status < 300:
        return status
    target = channel.status_code_mapping.get(str(status))
    if target is None:
        return status
    try:
        mapped = int(target.strip())
    except ValueError:
        return status
    return mapped if 100 <= mapped <= 599 else status
