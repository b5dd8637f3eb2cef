"""Channel routing: tiers, weights, exclusion of tried channels, keys, retry rules, status mapping."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from tollway.providers.base import UpstreamFailure
from tollway.relay.channel import TYPE_ANTHROPIC, TYPE_GEMINI, TYPE_OPENAI, ChannelSnapshot
from tollway.relay.routing import AbilityIndex, ChannelSelector, KeyPicker, map_status, should_retry


def ch(cid: int, **kw: Any) -> ChannelSnapshot:
    values: dict[str, Any] = {
        "type": TYPE_OPENAI,
        "name": f"c{cid}",
        "base_url": "https://up.example",
        "keys": (f"sk-{cid}",),
        "models": ("gpt-4o",),
    }
    values.update(kw)
    return ChannelSnapshot(id=cid, **values)


def selector(*channels: ChannelSnapshot, seed: int = 1) -> ChannelSelector:
    return ChannelSelector(AbilityIndex(channels), random.Random(seed))


# ----- AbilityIndex --------------------------------------------------------------------------
def test_tiers_are_ordered_by_priority_descending() -> None:
    index = AbilityIndex([ch(1, priority=0), ch(2, priority=10), ch(3, priority=10), ch(4, priority=-5)])
    tiers = index.channels_for("default", "gpt-4o")
    assert [[c.id for c in tier] for tier in tiers] == [[2, 3], [1], [4]]


def test_disabled_channels_are_not_indexed() -> None:
    index = AbilityIndex([ch(1, status=2), ch(2, status=3), ch(3, status=0), ch(4)])
    assert [[c.id for c in t] for t in index.channels_for("default", "gpt-4o")] == [[4]]
    assert selector(ch(1, status=3)).select("default", "gpt-4o", ()) is None


def test_groups_are_isolated() -> None:
    index = AbilityIndex([ch(1, groups=("vip",)), ch(2, groups=("default", "svip"))])
    assert [c.id for t in index.channels_for("vip", "gpt-4o") for c in t] == [1]
    assert [c.id for t in index.channels_for("default", "gpt-4o") for c in t] == [2]
    assert [c.id for t in index.channels_for("svip", "gpt-4o") for c in t] == [2]
    assert index.channels_for("other", "gpt-4o") == []
    assert selector(ch(1, groups=("vip",))).select("default", "gpt-4o", ()) is None


def test_unknown_model_has_no_candidates() -> None:
    assert AbilityIndex([ch(1)]).channels_for("default", "claude-3") == []


def test_gizmo_names_collapse_to_the_wildcard_entry() -> None:
    index = AbilityIndex([ch(1, models=("gpt-4-gizmo-*",)), ch(2, models=("gpt-4o-gizmo-*",))])
    assert [c.id for t in index.channels_for("default", "gpt-4-gizmo-g-abc123") for c in t] == [1]
    assert [c.id for t in index.channels_for("default", "gpt-4o-gizmo-g-xyz") for c in t] == [2]
    assert selector(*[ch(1, models=("gpt-4-gizmo-*",))]).select("default", "gpt-4-gizmo-g-1", ()) is not None


def test_channel_listing_a_model_twice_appears_once() -> None:
    index = AbilityIndex([ch(1, models=("gpt-4-gizmo-a", "gpt-4-gizmo-b", "gpt-4o"))])
    assert [[c.id for c in t] for t in index.channels_for("default", "gpt-4-gizmo-zzz")] == [[1]]


def test_models_for_group_sorted_and_distinct() -> None:
    index = AbilityIndex(
        [
            ch(1, models=("gpt-4o", "o3", "claude-3"), groups=("default", "vip")),
            ch(2, models=("gpt-4o", "a-model")),
            ch(3, models=("hidden",), status=2),
        ]
    )
    assert index.models_for_group("default") == ["a-model", "claude-3", "gpt-4o", "o3"]
    assert index.models_for_group("vip") == ["claude-3", "gpt-4o", "o3"]
    assert index.models_for_group("nobody") == []
    index.models_for_group("default").append("mutated")
    assert "mutated" not in index.models_for_group("default")


# ----- ChannelSelector -----------------------------------------------------------------------
def test_weights_split_traffic_as_weight_plus_ten() -> None:
    sel = selector(ch(1, weight=0), ch(2, weight=90), seed=42)
    picks = Counter(sel.select("default", "gpt-4o", ()).id for _ in range(10_000))  # type: ignore[union-attr]
    assert picks[1] / 10_000 == pytest.approx(10 / 110, abs=0.015)
    assert picks[2] / 10_000 == pytest.approx(100 / 110, abs=0.015)


def test_equal_weights_split_evenly_and_only_the_top_tier_is_used() -> None:
    sel = selector(ch(1, priority=5), ch(2, priority=5), ch(3, priority=5), ch(4, priority=0), seed=7)
    picks = Counter(sel.select("default", "gpt-4o", ()).id for _ in range(9_000))  # type: ignore[union-attr]
    assert set(picks) == {1, 2, 3}
    for cid in (1, 2, 3):
        assert picks[cid] / 9_000 == pytest.approx(1 / 3, abs=0.03)


def test_tried_channels_are_excluded_and_tiers_fall_through() -> None:
    sel = selector(ch(1, priority=10), ch(2, priority=10, weight=100), ch(3, priority=0))
    for _ in range(200):
        first = sel.select("default", "gpt-4o", {2})
        assert first is not None and first.id == 1
    assert sel.select("default", "gpt-4o", [1, 2]).id == 3  # type: ignore[union-attr]
    assert sel.select("default", "gpt-4o", (1, 2, 3)) is None


def test_tried_channel_of_another_tier_does_not_matter() -> None:
    sel = selector(ch(1, priority=10), ch(2, priority=10), ch(3, priority=0), seed=3)
    picks = Counter(sel.select("default", "gpt-4o", {3}).id for _ in range(2_000))  # type: ignore[union-attr]
    assert set(picks) == {1, 2}


def test_negative_weight_counts_as_zero() -> None:
    sel = selector(ch(1, weight=-50), ch(2, weight=0), seed=5)
    picks = Counter(sel.select("default", "gpt-4o", ()).id for _ in range(4_000))  # type: ignore[union-attr]
    assert picks[1] / 4_000 == pytest.approx(0.5, abs=0.04)


def test_selector_index_can_be_swapped() -> None:
    sel = selector(ch(1))
    sel.index = AbilityIndex([ch(2)])
    assert sel.select("default", "gpt-4o", ()).id == 2  # type: ignore[union-attr]


# ----- KeyPicker ------------------------------------------------------------------------------
def test_single_key_and_keyless_channels() -> None:
    picker = KeyPicker(random.Random(1))
    assert picker.pick(ch(1)) == (0, "sk-1")
    assert picker.pick(ch(2, keys=())) == (0, "")
    with pytest.raises(LookupError):
        picker.pick(ch(1), exclude={0})


def test_random_mode_uses_every_key_and_honours_exclude() -> None:
    picker = KeyPicker(random.Random(2))
    channel = ch(1, keys=("a", "b", "c"), multi_key_mode="random")
    seen = Counter(picker.pick(channel) for _ in range(3_000))
    assert set(seen) == {(0, "a"), (1, "b"), (2, "c")}
    assert all(v / 3_000 == pytest.approx(1 / 3, abs=0.05) for v in seen.values())
    assert {picker.pick(channel, exclude={0, 2}) for _ in range(50)} == {(1, "b")}
    with pytest.raises(LookupError):
        picker.pick(channel, exclude={0, 1, 2})


def test_polling_mode_round_robins_per_channel() -> None:
    picker = KeyPicker()
    one = ch(1, keys=("a", "b", "c"), multi_key_mode="polling")
    two = ch(2, keys=("x", "y"), multi_key_mode="polling")
    assert [picker.pick(one)[0] for _ in range(4)] == [0, 1, 2, 0]
    assert [picker.pick(two)[1] for _ in range(3)] == ["x", "y", "x"]
    assert picker.pick(one) == (1, "b")


def test_polling_skips_excluded_keys() -> None:
    picker = KeyPicker()
    channel = ch(1, keys=("a", "b", "c"), multi_key_mode="polling")
    assert picker.pick(channel, exclude={0}) == (1, "b")
    assert picker.pick(channel, exclude={2}) == (0, "a")
    with pytest.raises(LookupError):
        picker.pick(channel, exclude={0, 1, 2})


def test_polling_restarts_when_keys_change() -> None:
    picker = KeyPicker()
    channel = ch(1, keys=("a", "b", "c"), multi_key_mode="polling")
    picker.pick(channel)
    picker.pick(channel)
    changed = ch(1, keys=("a", "b", "d"), multi_key_mode="polling")
    assert picker.pick(changed) == (0, "a")
    picker.forget(1)
    assert picker.pick(changed) == (0, "a")


# ----- should_retry -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "channel_type", "timed_out", "expected"),
    [
        (0, TYPE_OPENAI, False, True),  # connection error
        (0, TYPE_OPENAI, True, True),  # RELAY_TIMEOUT
        (200, TYPE_OPENAI, True, True),  # timed out while the headers were late
        (429, TYPE_OPENAI, False, True),
        (307, TYPE_OPENAI, False, True),
        (500, TYPE_OPENAI, False, True),
        (502, TYPE_OPENAI, False, True),
        (503, TYPE_OPENAI, False, True),
        (504, TYPE_OPENAI, False, False),  # the upstream may have done the work
        (524, TYPE_OPENAI, False, False),
        (400, TYPE_OPENAI, False, False),
        (400, TYPE_GEMINI, False, False),
        (400, TYPE_ANTHROPIC, False, True),
        (408, TYPE_OPENAI, False, False),
        (200, TYPE_OPENAI, False, False),
        (204, TYPE_OPENAI, False, False),
        (401, TYPE_OPENAI, False, True),
        (403, TYPE_OPENAI, False, True),
        (404, TYPE_OPENAI, False, True),
        (413, TYPE_OPENAI, False, True),
    ],
)
def test_should_retry_table(status: int, channel_type: int, timed_out: bool, expected: bool) -> None:
    failure = UpstreamFailure(status=status, message="x") if status else None
    assert (
        should_retry(
            failure, status=status, local=False, pinned=False, channel_type=channel_type, timed_out=timed_out
        )
        is expected
    )


@pytest.mark.parametrize("status", [0, 429, 500, 503, 401])
@pytest.mark.parametrize(("local", "pinned"), [(True, False), (False, True), (True, True)])
def test_never_retry_local_errors_or_pinned_channels(status: int, local: bool, pinned: bool) -> None:
    assert not should_retry(
        None, status=status, local=local, pinned=pinned, channel_type=TYPE_ANTHROPIC, timed_out=status == 0
    )


# ----- map_status ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mapping", "status", "expected"),
    [
        ({}, 500, 500),
        ({"500": "503"}, 500, 503),
        ({"500": "503"}, 502, 502),
        ({"429": " 503 "}, 429, 503),
        ({"500": "oops"}, 500, 500),
        ({"x": "400"}, 500, 500),
        ({"500": "9999"}, 500, 500),
        ({"200": "500"}, 200, 200),
        ({"401": "400", "500": "502"}, 401, 400),
    ],
)
def test_map_status(mapping: dict[str, str], status: int, expected: int) -> None:
    assert map_status(ch(1, status_code_mapping=mapping), status) == expected
