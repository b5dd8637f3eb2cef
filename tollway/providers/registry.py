"""Which adapter serves a channel, by new-api's channel type number.

new-api relays every type it does not special-case as OpenAI, so Tollway does the same: only the
types whose upstream speaks another dialect (or keeps OpenAI's bodies under another URL layout)
answer None until their adapters exist.
"""

from __future__ import annotations

from enum import IntEnum

from tollway.providers.azure import AzureOpenAI
from tollway.providers.base import Provider
from tollway.providers.openai_compatible import CustomEndpoint, OpenAICompatible


class ChannelType(IntEnum):
    """new-api's channel type numbers (constant/channel.go); the numbers are stored in databases."""

    OPENAI = 1
    MIDJOURNEY = 2
    AZURE = 3
    OLLAMA = 4
    MIDJOURNEY_PLUS = 5
    OPENAI_MAX = 6
    OHMYGPT = 7
    CUSTOM = 8
    AILS = 9
    AIPROXY = 10
    PALM = 11
    API2GPT = 12
    AIGC2D = 13
    ANTHROPIC = 14
    BAIDU = 15
    ZHIPU = 16
    ALI = 17
    XUNFEI = 18
    AI360 = 19
    OPENROUTER = 20
    AIPROXY_LIBRARY = 21
    FASTGPT = 22
    TENCENT = 23
    GEMINI = 24
    MOONSHOT = 25
    ZHIPU_V4 = 26
    PERPLEXITY = 27
    LINGYIWANWU = 31
    AWS = 33
    COHERE = 34
    MINIMAX = 35
    SUNO = 36
    DIFY = 37
    JINA = 38
    CLOUDFLARE = 39
    SILICONFLOW = 40
    VERTEX_AI = 41
    MISTRAL = 42
    DEEPSEEK = 43
    MOKAAI = 44
    VOLCENGINE = 45
    BAIDU_V2 = 46
    XINFERENCE = 47
    XAI = 48
    COZE = 49
    KLING = 50
    JIMENG = 51
    VIDU = 52
    SUBMODEL = 53
    DOUBAO_VIDEO = 54
    SORA = 55
    REPLICATE = 56
    CODEX = 57


_CT = ChannelType  # short alias for the tables below

# OpenAI-compatible types and the address new-api uses when a channel has no base URL.
OPENAI_DEFAULT_BASE_URLS: dict[ChannelType, str] = {
    _CT.OPENAI: "https://api.openai.com",
    _CT.OLLAMA: "http://localhost:11434",
    _CT.OPENAI_MAX: "https://api.openaimax.com",
    _CT.OHMYGPT: "https://api.ohmygpt.com",
    _CT.AILS: "https://api.caipacity.com",
    _CT.AIPROXY: "https://api.aiproxy.io",
    _CT.API2GPT: "https://api.api2gpt.com",
    _CT.AIGC2D: "https://api.aigc2d.com",
    _CT.AI360: "https://api.360.cn",
    _CT.OPENROUTER: "https://openrouter.ai/api",
    _CT.FASTGPT: "https://fastgpt.run/api/openapi",
    _CT.MOONSHOT: "https://api.moonshot.cn",
    _CT.LINGYIWANWU: "https://api.lingyiwanwu.com",
    _CT.JINA: "https://api.jina.ai",
    _CT.SILICONFLOW: "https://api.siliconflow.cn",
    _CT.MISTRAL: "https://api.mistral.ai",
    _CT.DEEPSEEK: "https://api.deepseek.com",
    _CT.XINFERENCE: "",
    _CT.XAI: "https://api.x.ai",
    _CT.SUBMODEL: "https://llm.submodel.ai",
}

# Upstreams that answer 422 to a `stream_options` field (they send stream usage unasked).
NO_STREAM_OPTIONS: frozenset[ChannelType] = frozenset({_CT.MISTRAL})

# Types that need an adapter of their own: another dialect, another URL layout, or async tasks.
NOT_OPENAI: frozenset[ChannelType] = frozenset(
    {
        _CT.MIDJOURNEY, _CT.MIDJOURNEY_PLUS, _CT.SUNO,  # task APIs
        _CT.KLING, _CT.JIMENG, _CT.VIDU, _CT.DOUBAO_VIDEO, _CT.SORA, _CT.REPLICATE,  # video / image tasks
        _CT.ANTHROPIC, _CT.GEMINI, _CT.VERTEX_AI, _CT.AWS, _CT.PALM, _CT.COHERE,
        _CT.BAIDU, _CT.XUNFEI, _CT.ZHIPU, _CT.TENCENT, _CT.AIPROXY_LIBRARY, _CT.DIFY, _CT.COZE, _CT.MOKAAI, _CT.CODEX,
        _CT.ALI,  # OpenAI bodies under /compatible-mode/v1, native APIs elsewhere
        _CT.ZHIPU_V4,  # /api/paas/v4
        _CT.PERPLEXITY,  # no /v1 prefix
        _CT.MINIMAX,  # /v1/text/chatcompletion_v2
        _CT.CLOUDFLARE,  # /client/v4/accounts/<account>/ai/v1
        _CT.VOLCENGINE,  # /api/v3
        _CT.BAIDU_V2,  # /v2
    }
)  # fmt: skip


class ProviderRegistry:
    """One shared, stateless adapter per channel type, built once at startup."""

    __slots__ = ("_by_type", "_generic")

    def __init__(self, azure_api_version: str) -> None:
        self._generic = OpenAICompatible()
        self._by_type: dict[int, Provider | None] = {t.value: None for t in NOT_OPENAI}
        for channel_type, base_url in OPENAI_DEFAULT_BASE_URLS.items():
            self._by_type[channel_type.value] = OpenAICompatible(
                base_url, stream_options=channel_type not in NO_STREAM_OPTIONS
            )
        self._by_type[_CT.AZURE.value] = AzureOpenAI(azure_api_version)
        self._by_type[_CT.CUSTOM.value] = CustomEndpoint()

    def get(self, channel_type: int) -> Provider | None:
        """The adapter for ``channel_type``; unknown numbers are treated as OpenAI, as new-api does."""
        return self._by_type.get(channel_type, self._generic)
