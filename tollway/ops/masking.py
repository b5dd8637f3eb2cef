"""Masking of sensitive details in error text shown to users or written to logs: upstream URLs,
IP addresses, domains and API keys (seed 000, "敏感信息脱敏")."""

from __future__ import annotations

import re

_URL = re.compile(r"\b(https?|wss?)://([^\s/?#\"'<>]+)([^\s?#\"'<>]*)(\?[^\s#\"'<>]*)?", re.IGNORECASE)
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b")
_KEY = re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_\-]{8,}\b")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._\-+/=]{8,}")
_API_KEY_FIELD = re.compile(r"(?i)\b(api[_-]?key|key|token|secret)([=:]\s*)[^\s&,;\"']+")
_DOMAIN = re.compile(
    r"\b((?:[a-z0-9-]+\.)+)(com|net|org|io|ai|cn|dev|app|co|cloud|xyz|top|me|uk|de|jp)\b", re.I
)


def _mask_url(match: re.Match[str]) -> str:
    scheme, host, path, query = match.group(1), match.group(2), match.group(3), match.group(4)
    host = host.rsplit("@", 1)[-1].split(":", 1)[0]
    last = host.rsplit(".", 1)[-1] if "." in host and not host.replace(".", "").isdigit() else "***"
    masked = f"{scheme}://***.{last}" if last != "***" else f"{scheme}://***"
    segments = [segment for segment in path.split("/") if segment]
    if segments:
        masked += "/" + "/".join("***" for _ in segments)
    if query:
        pairs = [pair.split("=", 1)[0] for pair in query[1:].split("&") if pair]
        masked += "?" + "&".join(f"{name}=***" for name in pairs)
    return masked


def _mask_domain(match: re.Match[str]) -> str:
    labels = match.group(1).rstrip(".").split(".")
    return ".".join("***" for _ in labels) + "." + match.group(2)


def mask_sensitive(text: str) -> str:
    """``text`` with URLs, IPv4 addresses, domains, keys and bearer tokens replaced by ``***``."""
    text = _URL.sub(_mask_url, text)
    text = _KEY.sub(lambda m: f"{m.group(1)}-***", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} ***", text)
    text = _API_KEY_FIELD.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _IPV4.sub("***.***.***.***", text)
    return _DOMAIN.sub(_mask_domain, text)
