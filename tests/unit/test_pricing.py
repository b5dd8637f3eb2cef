"""Prices and the quota formulas: CONTRACT §3, reference behaviour §1 (no database)."""

from __future__ import annotations

from typing import Any, TypeVar, cast

import pytest

from tollway.billing import defaults
from tollway.billing.pricing import (
    CACHE_RATIO,
    COMPLETION_RATIO,
    GROUP_RATIO,
    MODEL_PRICE,
    MODEL_RATIO,
    PRE_CONSUMED_QUOTA,
    SELF_USE_MODEL_RATIO,
    Price,
    PriceTable,
    PriceTableCache,
    apply_trust_shortcut,
    matching_name,
    reserve_quota,
    text_quota,
)
from tollway.db.engine import Database
from tollway.node_sync import NodeCounters
from tollway.options import REGISTRY, OptionError, Options, OptionSpec

T = TypeVar("T")
QPU = 500_000.0
TABLE = PriceTable.build()


def price(model: str, group: str = "default", table: PriceTable = TABLE) -> Price:
    found = table.price_for(model, group, QPU)
    assert found is not None, model
    return found


def ratio_price(
    model_ratio: float, completion_ratio: float = 1, cache_ratio: float = 1, group: float = 1
) -> Price:
    return Price(model_ratio, completion_ratio, cache_ratio, group, None, QPU)


# ----- defaults ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "ratio"),
    [
        ("gpt-4o", 1.25),
        ("gpt-4o-mini", 0.075),
        ("gpt-3.5-turbo", 0.25),
        ("gpt-4", 15),
        ("o1", 7.5),
        ("claude-3-5-sonnet-20241022", 1.5),
        ("gemini-2.0-flash", 0.05),
        ("text-embedding-3-small", 0.01),
        ("whisper-1", 15),
        ("tts-1", 7.5),
        ("gpt-4-gizmo-*", 15),
    ],
)
def test_default_model_ratios_match_new_api(model: str, ratio: float) -> None:
    assert defaults.DEFAULT_MODEL_RATIO[model] == ratio


PER_CALL_DEFAULTS = {
    "dall-e-3": 0.04,
    "mj_imagine": 0.1,
    "mj_describe": 0.05,
    "mj_upscale": 0.05,
    "mj_inpaint": 0,
    "mj_custom_zoom": 0,
    "swap_face": 0.05,
    "suno_music": 0.1,
    "suno_lyrics": 0.01,
    "gpt-4-gizmo-*": 0.1,
}


@pytest.mark.parametrize(("model", "usd"), PER_CALL_DEFAULTS.items())
def test_default_per_call_prices_match_new_api(model: str, usd: float) -> None:
    assert defaults.DEFAULT_MODEL_PRICE[model] == usd


def test_derived_ratios_are_exact_decimals() -> None:
    # gpt-4o-mini: USD 0.15 in / 0.60 out / 0.075 cached per 1M → 0.075, 4, 0.5 (no float noise)
    assert defaults.DEFAULT_COMPLETION_RATIO["gpt-4o-mini"] == 4.0
    assert defaults.DEFAULT_CACHE_RATIO["gpt-4o-mini"] == 0.5
    assert defaults.DEFAULT_COMPLETION_RATIO["claude-sonnet-4-5"] == 5.0
    assert defaults.DEFAULT_CACHE_RATIO["claude-opus-4-1"] == 0.1
    assert defaults.DEFAULT_GROUP_RATIO == {"default": 1, "vip": 1, "svip": 1}


def test_defaults_pass_their_own_validators() -> None:
    specs: tuple[OptionSpec[Any], ...] = (
        MODEL_RATIO,
        COMPLETION_RATIO,
        CACHE_RATIO,
        MODEL_PRICE,
        GROUP_RATIO,
    )
    for spec in (*specs, PRE_CONSUMED_QUOTA):
        assert spec.parse(spec.render(spec.default)) == spec.default
    assert PRE_CONSUMED_QUOTA.default == 500


def test_every_ratio_model_has_a_completion_ratio() -> None:
    assert set(defaults.DEFAULT_MODEL_RATIO) == set(defaults.DEFAULT_COMPLETION_RATIO)
    assert set(defaults.DEFAULT_CACHE_RATIO) <= set(defaults.DEFAULT_MODEL_RATIO)


# ----- the formula --------------------------------------------------------------------------------
def test_gpt_4o_mini_by_hand() -> None:
    # ratio 0.075 (USD 0.15/1M ÷ 2), completion ratio 4 (0.60 ÷ 0.15), group 1:
    # (1000 + 500 × 4) × 0.075 × 1 = 3000 × 0.075 = 225 quota = USD 0.00045
    # (vendor: 1000 × 0.15/1M + 500 × 0.60/1M = 0.00015 + 0.0003 = 0.00045)
    assert text_quota(price("gpt-4o-mini"), 1000, 500) == 225


def test_cached_prompt_tokens_by_hand() -> None:
    # gpt-4o: ratio 1.25, completion 4, cache 0.5; 2000 prompt of which 1000 cached, 100 completion:
    # (2000 − 1000 + 1000 × 0.5 + 100 × 4) × 1.25 = 1900 × 1.25 = 2375
    assert text_quota(price("gpt-4o"), 2000, 100, cached_tokens=1000) == 2375
    # cached tokens beyond the prompt count as the whole prompt cached: 1000 × 0.5 × 1.25 = 625
    assert text_quota(price("gpt-4o"), 1000, 0, cached_tokens=5000) == 625


def test_group_ratio_multiplies() -> None:
    table = PriceTable.build(group_ratio={"default": 1, "vip": 0.8})
    # claude-sonnet-4-5: ratio 1.5, completion 5; (1000 + 200 × 5) × 1.5 × 0.8 = 2000 × 1.2 = 2400
    assert text_quota(price("claude-sonnet-4-5", "vip", table), 1000, 200) == 2400
    assert table.group_ratio("nobody") == 1.0


def test_minimum_one_when_ratio_is_not_zero() -> None:
    # text-embedding-3-small: 10 × 0.01 = 0.1 → rounds to 0 → charged 1
    assert text_quota(price("text-embedding-3-small"), 10, 0) == 1
    assert text_quota(ratio_price(0.01), 0, 0) == 1


@pytest.mark.parametrize(("model_ratio", "group"), [(0, 1), (1.5, 0), (0, 0)])
def test_zero_ratio_is_free(model_ratio: float, group: float) -> None:
    assert text_quota(ratio_price(model_ratio, completion_ratio=4, group=group), 1000, 1000) == 0


@pytest.mark.parametrize(
    ("model_ratio", "prompt", "expected"),
    [
        (0.5, 5, 3),  # 2.5 → 3: half away from zero, not banker's 2
        (0.5, 7, 4),  # 3.5 → 4
        (1.15, 50, 58),  # 57.5 exactly in decimal; 1.15 * 50 in binary floats is 57.4999…
        (0.145, 100, 15),  # 14.5 exactly; 0.145 * 100 in floats is 14.4999…
        (0.3, 1, 1),  # 0.3 → 0 → minimum 1
        (0.075, 1006, 75),  # 75.45 → 75
    ],
)
def test_rounding_is_decimal_half_up(model_ratio: float, prompt: int, expected: int) -> None:
    assert text_quota(ratio_price(model_ratio), prompt, 0) == expected


def test_per_call_price() -> None:
    # dall-e-3: 0.04 USD × 500 000 quota/USD × group 1 = 20 000, whatever the tokens
    dalle = price("dall-e-3")
    assert dalle.per_call and dalle.model_price == 0.04
    assert text_quota(dalle, 0, 0) == 20_000
    assert text_quota(dalle, 5000, 5000) == 20_000
    vip = PriceTable.build(group_ratio={"vip": 1.5})
    assert text_quota(price("dall-e-3", "vip", vip), 10, 10) == 30_000
    # a free per-call model stays free (no minimum of 1)
    assert text_quota(price("mj_inpaint"), 100, 100) == 0
    # 0.000001 × 500 000 = 0.5 → 1
    tiny = PriceTable.build(model_price={"tiny": 0.000001})
    assert text_quota(price("tiny", table=tiny), 0, 0) == 1


def test_per_call_price_wins_over_ratio() -> None:
    table = PriceTable.build(model_ratio={"both": 2}, model_price={"both": 0.01})
    both = price("both", table=table)
    assert both.model_price == 0.01 and both.model_ratio == 2
    assert text_quota(both, 1_000_000, 0) == 5000


def test_negative_usage_counts_as_zero() -> None:
    assert text_quota(ratio_price(1, completion_ratio=2), -50, 10, cached_tokens=-3) == 20


# ----- lookups ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "canonical"),
    [
        ("gpt-4-gizmo-g-abc123", "gpt-4-gizmo-*"),
        ("gpt-4-gizmo", "gpt-4-gizmo-*"),
        ("gpt-4o-gizmo-g-xyz", "gpt-4o-gizmo-*"),
        ("gpt-4o", "gpt-4o"),
    ],
)
def test_gizmo_names_collapse(model: str, canonical: str) -> None:
    assert matching_name(model) == canonical


def test_gizmo_lookups_use_the_collapsed_name() -> None:
    assert text_quota(price("gpt-4-gizmo-g-abc123"), 100, 100) == 50_000  # 0.1 USD per call
    gpt4o_gizmo = price("gpt-4o-gizmo-g-xyz")  # no per-call default: billed by ratio
    assert gpt4o_gizmo.model_price is None
    assert (gpt4o_gizmo.model_ratio, gpt4o_gizmo.completion_ratio) == (2.5, 3)


def test_wildcard_keys_longest_prefix_wins() -> None:
    table = PriceTable.build(
        model_ratio={"my-*": 1, "my-model-*": 2, "my-model-x": 3},
        model_price={"img-*": 0.02, "img-hd-*": 0.08},
        completion_ratio={"my-model-*": 6},
    )
    assert table.model_ratio("my-model-x") == 3  # exact beats any wildcard
    assert table.model_ratio("my-model-y") == 2
    assert table.model_ratio("my-other") == 1
    assert table.model_ratio("your-model") is None
    assert table.model_price("img-hd-1") == 0.08
    assert table.model_price("img-small") == 0.02
    assert table.completion_ratio("my-model-y") == 6
    assert table.completion_ratio("my-other") == 1


def test_unknown_model_has_no_price() -> None:
    assert TABLE.model_ratio("no-such-model") is None
    assert TABLE.model_price("no-such-model") is None
    assert TABLE.price_for("no-such-model", "default", QPU) is None


def test_self_use_mode_prices_unknown_models_at_37_5() -> None:
    found = TABLE.price_for("gpt-4o-2099-01-01", "default", QPU, self_use_mode=True)
    assert found is not None
    assert found.model_ratio == SELF_USE_MODEL_RATIO == 37.5
    assert found.completion_ratio == 4  # gpt-4o family rule
    assert found.model_price is None
    # known models are unaffected
    assert TABLE.price_for("gpt-4o", "default", QPU, self_use_mode=True) == price("gpt-4o")


FAMILY_ONLY = PriceTable.build(completion_ratio={})


@pytest.mark.parametrize(
    ("model", "ratio"),
    [
        ("gpt-4o-2024-05-13", 3),
        ("gpt-4o-2099-01-01", 4),
        ("gpt-4o-mini-2099", 4),
        ("gpt-4-turbo-2024-04-09", 3),
        ("gpt-4-1106-preview", 3),
        ("gpt-4-0613", 2),
        ("gpt-4.1-2099", 4),
        ("gpt-3.5-turbo", 3),
        ("gpt-3.5-turbo-0125", 3),
        ("gpt-3.5-turbo-1106", 2),
        ("gpt-3.5-turbo-16k", 4 / 3),
        ("gpt-5-2099", 8),
        ("o1-2099", 4),
        ("o3-mini-2099", 4),
        ("o4-mini-2099", 4),
        ("claude-3-5-sonnet-20991231", 5),
        ("claude-sonnet-4-9", 5),
        ("claude-opus-4-9", 5),
        ("claude-2.1", 3),
        ("claude-instant-1.1", 3),
        ("gemini-1.5-pro-003", 4),
        ("gemini-2.0-flash-exp", 4),
        ("gemini-2.5-pro-preview-03-25", 8),
        ("gemini-2.5-flash-lite-preview", 4),
        ("gemini-2.5-flash-preview-09-2025", 2.5 / 0.3),
        ("deepseek-v3", 4),
        ("mistral-large-2407", 3),
        ("command-r-plus", 5),
        ("command-r", 3),
        ("llama-3-70b", 1),
    ],
)
def test_completion_ratio_family_rules(model: str, ratio: float) -> None:
    assert FAMILY_ONLY.completion_ratio(model) == pytest.approx(ratio)


def test_completion_ratio_option_comes_before_family_rules() -> None:
    assert PriceTable.build(completion_ratio={"gpt-4o": 6}).completion_ratio("gpt-4o") == 6
    assert TABLE.completion_ratio("deepseek-chat") == 1.5  # list price, not the family's 4
    assert TABLE.completion_ratio("deepseek-v3") == 4


def test_cache_ratio_defaults_to_one() -> None:
    assert TABLE.cache_ratio("gpt-4o") == 0.5
    assert TABLE.cache_ratio("deepseek-chat") == 0.1
    assert TABLE.cache_ratio("gpt-4") == 1
    assert TABLE.cache_ratio("no-such-model") == 1


# ----- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [MODEL_RATIO, COMPLETION_RATIO, CACHE_RATIO, MODEL_PRICE, GROUP_RATIO])
@pytest.mark.parametrize("value", ["-1", '"1.5"', "true", "null", "[1]", "NaN", "Infinity"])
def test_option_maps_refuse_bad_values_naming_the_key(spec: OptionSpec[Any], value: str) -> None:
    with pytest.raises(OptionError) as caught:
        spec.parse(f'{{"good": 1, "bad-key": {value}}}')
    message = str(caught.value)
    assert message.startswith(f"{spec.name} must be JSON with ")
    assert "bad-key" in message


def test_group_ratio_message_matches_new_api() -> None:
    with pytest.raises(OptionError, match=r"^GroupRatio must be JSON with ratios >= 0"):
        GROUP_RATIO.parse('{"vip": -0.5}')


def test_option_maps_accept_numbers() -> None:
    assert GROUP_RATIO.parse('{"default": 1, "vip": 0.5, "free": 0}') == {"default": 1, "vip": 0.5, "free": 0}
    with pytest.raises(OptionError):
        MODEL_RATIO.parse("[1, 2]")


def test_pre_consumed_quota_refuses_negative() -> None:
    assert PRE_CONSUMED_QUOTA.parse("800") == 800
    with pytest.raises(OptionError, match="PreConsumedQuota"):
        PRE_CONSUMED_QUOTA.parse("-1")


def test_options_are_declared_on_the_registry() -> None:
    for name in (
        "ModelRatio",
        "CompletionRatio",
        "CacheRatio",
        "ModelPrice",
        "GroupRatio",
        "PreConsumedQuota",
    ):
        assert REGISTRY.get(name) is not None


def test_table_from_default_options() -> None:
    options = Options(REGISTRY, cast(Database, None), NodeCounters())
    table = PriceTable.from_options(options)
    assert table == TABLE
    assert options.get(PRE_CONSUMED_QUOTA) == 500


class FakeOptions:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, spec: OptionSpec[T]) -> T:
        return cast(T, self.values.get(spec.name, spec.default))


def test_table_cache_rebuilds_only_on_change() -> None:
    options = FakeOptions()
    cache = PriceTableCache()
    first = cache.get(options)
    assert cache.get(options) is first
    options.values["GroupRatio"] = {"default": 2}
    second = cache.get(options)
    assert second is not first and second.group_ratio("default") == 2
    assert cache.get(options) is second


# ----- reservation ------------------------------------------------------------------------------
def test_reserve_with_max_tokens() -> None:
    # gpt-4o-mini: (1000 prompt + 500 max) × 0.075 × 1 = 112.5 → 113; no completion ratio
    assert reserve_quota(price("gpt-4o-mini"), 1000, 500, 500) == 113


@pytest.mark.parametrize("max_tokens", [None, 0])
def test_reserve_without_max_tokens_uses_pre_consumed_tokens(max_tokens: int | None) -> None:
    # 500 tokens × 0.075 = 37.5 → 38, whatever the prompt
    assert reserve_quota(price("gpt-4o-mini"), 1000, max_tokens, 500) == 38


def test_reserve_applies_group_ratio_and_per_call_price() -> None:
    vip = PriceTable.build(group_ratio={"vip": 2})
    # gpt-4: (100 + 100) × 15 × 2 = 6000
    assert reserve_quota(price("gpt-4", "vip", vip), 100, 100, 500) == 6000
    assert reserve_quota(price("dall-e-3"), 100, 4000, 500) == 20_000


@pytest.mark.parametrize(
    ("reserve", "user_quota", "token_remaining", "expected"),
    [
        (100, 10_001, None, 0),  # rich user, unlimited token: trusted
        (100, 10_000, None, 100),  # exactly 100×: not more than
        (100, 5_000, None, 100),
        (100, 20_000, 10_001, 0),  # limited token also holds more than 100×
        (100, 20_000, 10_000, 100),
        (100, 20_000, 50, 100),
        (0, 0, None, 0),
    ],
)
def test_trust_shortcut(reserve: int, user_quota: int, token_remaining: int | None, expected: int) -> None:
    assert apply_trust_shortcut(reserve, user_quota, token_remaining) == expected
