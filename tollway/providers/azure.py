"""Azure OpenAI: OpenAI's bodies and answers, Azure's URLs (deployments, api-version) and key header."""

from __future__ import annotations

from tollway.providers.base import RelayRequest
from tollway.providers.openai_compatible import OpenAICompatible
from tollway.relay.channel import ChannelSnapshot

DEFAULT_API_VERSION = "2024-12-01-preview"  # new-api's AZURE_DEFAULT_API_VERSION


class AzureOpenAI(OpenAICompatible):
    """``channel.other`` holds the API version (new-api's field); the constructor's is the fallback."""

    __slots__ = ("default_api_version",)

    def __init__(self, default_api_version: str = DEFAULT_API_VERSION) -> None:
        super().__init__()
        self.default_api_version = default_api_version

    def build_url(self, channel: ChannelSnapshot, request: RelayRequest) -> str:
        version = channel.other.strip() or self.default_api_version
        path = request.path
        rest = path[3:] if path == "/v1" or path.startswith("/v1/") else path
        if rest == "/responses" or rest.startswith("/responses/"):
            # Azure's v1 Responses API takes the model from the body, not from a deployment path.
            url = f"{channel.base_url}/openai/v1{rest}?api-version={version}"
        else:
            # Azure deployment names cannot hold "." (new-api: gpt-3.5-turbo → gpt-35-turbo).
            deployment = channel.upstream_model(request.model).replace(".", "")
            url = f"{channel.base_url}/openai/deployments/{deployment}{rest}?api-version={version}"
        if request.query:
            kept = "&".join(p for p in request.query.split("&") if p and not p.startswith("api-version="))
            if kept:
                url += "&" + kept
        return url

    def auth_headers(self, channel: ChannelSnapshot, key: str) -> dict[str, str]:
        return {"api-key": key}
