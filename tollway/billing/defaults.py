"""Built-in price tables: the defaults of the ``ModelRatio``, ``CompletionRatio``, ``CacheRatio``,
``ModelPrice`` and ``GroupRatio`` options.

Token-billed models are written as the vendor's list price in USD per 1M tokens (input, output,
cached input), so the table can be checked line by line against a price page; the ratios new-api
stores are derived from it with exact decimal arithmetic:

* model ratio = input / 2 (ratio 1 ≙ USD 2 per 1M input tokens),
* completion ratio = output / input,
* cache ratio = cached input / input (absent when the vendor has no cached-input price).

Prices are the standard (non-batch, non-priority, shortest context tier) list prices.
``COMPLETION_FAMILY_RULES`` at the end covers models the completion-ratio map does not name.
"""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

USD_PER_MILLION_AT_RATIO_1 = Decimal(2)


class ListPrice(NamedTuple):
    """One token-billed model: USD per 1M tokens, as strings so the derivation stays exact."""

    model: str
    input: str
    output: str | None = None  # None: output billed like input (embeddings, speech)
    cached: str | None = None  # None: no cached-input discount


def _models(
    names: tuple[str, ...], usd_in: str, usd_out: str | None = None, usd_cached: str | None = None
) -> list[ListPrice]:
    """Several names (aliases, snapshots) at one price."""
    return [ListPrice(name, usd_in, usd_out, usd_cached) for name in names]


# fmt: off
LIST_PRICES: tuple[ListPrice, ...] = (
    # ----- OpenAI --------------------------------------------------------------------------
    *_models(("gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-2024-11-20"), "2.50", "10.00", "1.25"),
    *_models(("gpt-4o-2024-05-13", "chatgpt-4o-latest"), "5.00", "15.00"),
    *_models(("gpt-4o-mini", "gpt-4o-mini-2024-07-18"), "0.15", "0.60", "0.075"),
    *_models(("gpt-4o-audio-preview",), "2.50", "10.00"),  # text tokens; audio ratios are separate
    *_models(("gpt-4o-mini-audio-preview",), "0.15", "0.60"),
    *_models(("gpt-4o-realtime-preview",), "5.00", "20.00", "2.50"),
    *_models(("gpt-4o-mini-realtime-preview",), "0.60", "2.40", "0.30"),
    *_models(("gpt-4.1", "gpt-4.1-2025-04-14"), "2.00", "8.00", "0.50"),
    *_models(("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"), "0.40", "1.60", "0.10"),
    *_models(("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14"), "0.10", "0.40", "0.025"),
    *_models(("gpt-4.5-preview", "gpt-4.5-preview-2025-02-27"), "75.00", "150.00", "37.50"),
    *_models(("gpt-5", "gpt-5-2025-08-07", "gpt-5-chat-latest", "gpt-5-codex"), "1.25", "10.00", "0.125"),
    *_models(("gpt-5.1", "gpt-5.1-chat-latest", "gpt-5.1-codex"), "1.25", "10.00", "0.125"),
    *_models(("gpt-5-mini", "gpt-5-mini-2025-08-07"), "0.25", "2.00", "0.025"),
    *_models(("gpt-5-nano", "gpt-5-nano-2025-08-07"), "0.05", "0.40", "0.005"),
    *_models(("gpt-5-pro", "gpt-5-pro-2025-10-06"), "15.00", "120.00"),
    *_models(("o1", "o1-2024-12-17", "o1-preview", "o1-preview-2024-09-12"), "15.00", "60.00", "7.50"),
    *_models(("o1-mini", "o1-mini-2024-09-12"), "1.10", "4.40", "0.55"),
    *_models(("o1-pro", "o1-pro-2025-03-19"), "150.00", "600.00"),
    *_models(("o3", "o3-2025-04-16"), "2.00", "8.00", "0.50"),
    *_models(("o3-mini", "o3-mini-2025-01-31"), "1.10", "4.40", "0.55"),
    *_models(("o3-pro", "o3-pro-2025-06-10"), "20.00", "80.00"),
    *_models(("o4-mini", "o4-mini-2025-04-16"), "1.10", "4.40", "0.275"),
    *_models(("codex-mini-latest",), "1.50", "6.00", "0.375"),
    *_models(
        ("gpt-4-turbo", "gpt-4-turbo-2024-04-09", "gpt-4-turbo-preview", "gpt-4-0125-preview",
         "gpt-4-1106-preview", "gpt-4-vision-preview"),
        "10.00", "30.00",
    ),
    *_models(("gpt-4", "gpt-4-0613", "gpt-4-0314"), "30.00", "60.00"),
    *_models(("gpt-4-32k", "gpt-4-32k-0613"), "60.00", "120.00"),
    *_models(("gpt-3.5-turbo", "gpt-3.5-turbo-0125"), "0.50", "1.50"),
    *_models(("gpt-3.5-turbo-1106",), "1.00", "2.00"),
    *_models(("gpt-3.5-turbo-0613", "gpt-3.5-turbo-instruct"), "1.50", "2.00"),
    *_models(("gpt-3.5-turbo-16k", "gpt-3.5-turbo-16k-0613"), "3.00", "4.00"),
    *_models(("gpt-image-1",), "5.00", "40.00", "1.25"),  # text in, image out
    *_models(("text-embedding-3-small",), "0.02"),
    *_models(("text-embedding-3-large",), "0.13"),
    *_models(("text-embedding-ada-002",), "0.10"),
    # Moderation is free at OpenAI; new-api keeps a small ratio (0.1) so that usage stays visible.
    *_models(("omni-moderation-latest", "text-moderation-latest", "text-moderation-stable"), "0.20"),
    # new-api bills audio endpoints on counted tokens / characters with these ratios
    *_models(("whisper-1",), "30.00"),
    *_models(("tts-1", "tts-1-1106"), "15.00"),  # USD 15 per 1M characters
    *_models(("tts-1-hd", "tts-1-hd-1106"), "30.00"),
    # ChatGPT "GPTs": billed per call (ModelPrice); these ratios apply if an operator removes the price
    *_models(("gpt-4-gizmo-*",), "30.00", "60.00"),
    *_models(("gpt-4o-gizmo-*",), "5.00", "15.00"),
    # ----- Anthropic (cache reads are 10 % of input; Claude 3 Haiku 12 %) ----------------------
    *_models(
        ("claude-3-5-sonnet-20240620", "claude-3-5-sonnet-20241022", "claude-3-5-sonnet-latest",
         "claude-3-7-sonnet-20250219", "claude-3-7-sonnet-latest", "claude-3-sonnet-20240229",
         "claude-sonnet-4-20250514", "claude-sonnet-4-0",
         "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        "3.00", "15.00", "0.30",
    ),
    *_models(("claude-3-5-haiku-20241022", "claude-3-5-haiku-latest"), "0.80", "4.00", "0.08"),
    *_models(("claude-haiku-4-5-20251001", "claude-haiku-4-5"), "1.00", "5.00", "0.10"),
    *_models(("claude-3-haiku-20240307",), "0.25", "1.25", "0.03"),
    *_models(
        ("claude-3-opus-20240229", "claude-3-opus-latest", "claude-opus-4-20250514", "claude-opus-4-0",
         "claude-opus-4-1-20250805", "claude-opus-4-1"),
        "15.00", "75.00", "1.50",
    ),
    *_models(("claude-opus-4-5-20251101", "claude-opus-4-5"), "5.00", "25.00", "0.50"),
    *_models(("claude-2.1", "claude-2.0"), "8.00", "24.00"),
    *_models(("claude-instant-1.2",), "0.80", "2.40"),
    # ----- Google Gemini (prompts up to 128k / 200k tokens) ------------------------------------
    *_models(("gemini-1.5-pro", "gemini-1.5-pro-latest", "gemini-1.5-pro-001", "gemini-1.5-pro-002"), "1.25", "5.00"),
    *_models(
        ("gemini-1.5-flash", "gemini-1.5-flash-latest", "gemini-1.5-flash-001", "gemini-1.5-flash-002"),
        "0.075", "0.30",
    ),
    *_models(("gemini-1.5-flash-8b", "gemini-1.5-flash-8b-latest", "gemini-1.5-flash-8b-001"), "0.0375", "0.15"),
    *_models(("gemini-2.0-flash", "gemini-2.0-flash-001"), "0.10", "0.40", "0.025"),
    *_models(("gemini-2.0-flash-lite", "gemini-2.0-flash-lite-001"), "0.075", "0.30"),
    *_models(
        ("gemini-2.5-pro", "gemini-2.5-pro-preview-05-06", "gemini-2.5-pro-preview-06-05"),
        "1.25", "10.00", "0.125",
    ),
    *_models(("gemini-2.5-flash",), "0.30", "2.50", "0.03"),
    *_models(("gemini-2.5-flash-lite",), "0.10", "0.40", "0.01"),
    *_models(("gemini-3-pro-preview",), "2.00", "12.00", "0.20"),
    *_models(("gemini-embedding-001",), "0.15"),
    # ----- DeepSeek (V3.2 prices; both names serve the same model) -----------------------------
    *_models(("deepseek-chat", "deepseek-reasoner"), "0.28", "0.42", "0.028"),
    # ----- Alibaba Qwen (Model Studio international) ------------------------------------------
    *_models(("qwen-max", "qwen-max-latest"), "1.60", "6.40"),
    *_models(("qwen-plus", "qwen-plus-latest"), "0.40", "1.20"),
    *_models(("qwen-turbo", "qwen-turbo-latest"), "0.05", "0.20"),
    # ----- Mistral ---------------------------------------------------------------------------
    *_models(("mistral-large", "mistral-large-latest", "mistral-large-2411"), "2.00", "6.00"),
    *_models(("mistral-medium", "mistral-medium-latest"), "0.40", "2.00"),
    *_models(("mistral-small", "mistral-small-latest"), "0.10", "0.30"),
    *_models(("codestral", "codestral-latest"), "0.30", "0.90"),
    *_models(("mistral-embed",), "0.10"),
)

# USD per call. A model listed here is billed per call even when it also has a ratio.
DEFAULT_MODEL_PRICE: dict[str, float] = {
    "dall-e-3": 0.04,  # 1024×1024 standard
    "dall-e-2": 0.02,  # 1024×1024
    "imagen-3.0-generate-002": 0.03,
    "gpt-4-gizmo-*": 0.1,
    "mj_imagine": 0.1, "mj_variation": 0.1, "mj_reroll": 0.1, "mj_blend": 0.1, "mj_modal": 0.1,
    "mj_zoom": 0.1, "mj_shorten": 0.1, "mj_high_variation": 0.1, "mj_low_variation": 0.1, "mj_pan": 0.1,
    "mj_edits": 0.1, "mj_video": 0.8,
    "mj_inpaint": 0, "mj_custom_zoom": 0,
    "mj_describe": 0.05, "mj_upscale": 0.05, "mj_upload": 0.05, "swap_face": 0.05,
    "suno_music": 0.1, "suno_lyrics": 0.01,
}
# fmt: on

DEFAULT_GROUP_RATIO: dict[str, float] = {"default": 1, "vip": 1, "svip": 1}


def _ratio(numerator: str, denominator: Decimal) -> float:
    return float(Decimal(numerator) / denominator)


def _derive() -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    model: dict[str, float] = {}
    completion: dict[str, float] = {}
    cache: dict[str, float] = {}
    for row in LIST_PRICES:
        if row.model in model:
            raise ValueError(f"{row.model} listed twice")
        price_in = Decimal(row.input)
        model[row.model] = _ratio(row.input, USD_PER_MILLION_AT_RATIO_1)
        completion[row.model] = _ratio(row.output, price_in) if row.output is not None else 1.0
        if row.cached is not None:
            cache[row.model] = _ratio(row.cached, price_in)
    return model, completion, cache


DEFAULT_MODEL_RATIO, DEFAULT_COMPLETION_RATIO, DEFAULT_CACHE_RATIO = _derive()

# Used when the CompletionRatio option has no entry (exact or wildcard) for a model: new dated
# snapshots and provider-renamed variants. Shell-style patterns; the first match wins, so a
# specific snapshot comes before its family. Values follow new-api's hard-coded rules.
COMPLETION_FAMILY_RULES: tuple[tuple[str, float], ...] = (
    ("gpt-4o-2024-05-13", 3),
    ("chatgpt-4o-latest", 3),
    ("gpt-4o*", 4),
    ("gpt-4.1*", 4),
    ("gpt-4.5*", 2),
    ("gpt-4-turbo*", 3),
    ("gpt-4*-preview", 3),  # gpt-4-1106-preview, gpt-4-0125-preview, gpt-4-vision-preview
    ("gpt-4*", 2),
    ("gpt-3.5-turbo", 3),
    ("gpt-3.5*0125", 3),
    ("gpt-3.5*1106", 2),
    ("gpt-3.5*", 4 / 3),
    ("gpt-5*", 8),
    ("o1*", 4),
    ("o3*", 4),
    ("o4*", 4),
    ("claude-3*", 5),
    ("claude-sonnet-*", 5),
    ("claude-opus-*", 5),
    ("claude-haiku-*", 5),
    ("claude-2*", 3),
    ("claude-instant*", 3),
    ("gemini-2.5-pro*", 8),
    ("gemini-2.5-flash-lite*", 4),
    ("gemini-2.5-flash*", 2.5 / 0.3),
    ("gemini-3-pro*", 6),
    ("gemini*", 4),
    ("deepseek*", 4),  # V3/R1 as hosted elsewhere; deepseek-chat/-reasoner have exact defaults
    ("command-r-plus*", 5),
    ("command-r*", 3),
    ("mistral-*", 3),
    ("codestral*", 3),
)
