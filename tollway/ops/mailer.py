"""Outgoing email over SMTP (verification codes, password resets, notifications).

new-api's options configure it: ``SMTPServer``, ``SMTPPort`` (587), ``SMTPAccount``, ``SMTPFrom``,
``SMTPToken`` (the password; never listed by ``/api/option/`` because its name ends in Token) and
``SMTPSSLEnabled``. The standard library's :mod:`smtplib` does the talking, in a worker thread so
the event loop never waits on a slow mail server.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Literal

from tollway.options import REGISTRY, OptionError, Options


def _port_range(value: int) -> None:
    if not 0 < value < 65536:
        raise OptionError("SMTPPort must be between 1 and 65535")


SMTP_SERVER = REGISTRY.declare("SMTPServer", "")
SMTP_PORT = REGISTRY.declare("SMTPPort", 587, _port_range)
SMTP_ACCOUNT = REGISTRY.declare("SMTPAccount", "")
SMTP_FROM = REGISTRY.declare("SMTPFrom", "")
SMTP_TOKEN = REGISTRY.declare("SMTPToken", "")
SMTP_SSL_ENABLED = REGISTRY.declare("SMTPSSLEnabled", False)

SMTP_TIMEOUT = 20.0
Transport = Literal["ssl", "starttls", "opportunistic"]


class MailerError(Exception):
    """Sending failed. The message says why and names the server, never the SMTP password."""


@dataclass(frozen=True)
class SmtpConfig:
    server: str
    port: int
    account: str
    sender: str
    password: str
    ssl_enabled: bool

    @classmethod
    def from_options(cls, options: Options) -> SmtpConfig:
        return cls(
            server=options.get(SMTP_SERVER).strip(),
            port=options.get(SMTP_PORT),
            account=options.get(SMTP_ACCOUNT).strip(),
            sender=options.get(SMTP_FROM).strip(),
            password=options.get(SMTP_TOKEN),
            ssl_enabled=options.get(SMTP_SSL_ENABLED),
        )

    @property
    def transport(self) -> Transport:
        """Implicit TLS when asked for (or on 465, as new-api does); STARTTLS is required on 587 so
        that a password never crosses the network in clear; elsewhere it is used when offered."""
        if self.ssl_enabled or self.port == 465:
            return "ssl"
        if self.port == 587:
            return "starttls"
        return "opportunistic"

    @property
    def from_address(self) -> str:
        return self.sender or self.account


class Mailer:
    """Sends one HTML email per call with the SMTP settings given."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    @classmethod
    def from_options(cls, options: Options) -> Mailer:
        return cls(SmtpConfig.from_options(options))

    @property
    def configured(self) -> bool:
        return bool(self.config.server and self.config.from_address)

    async def send(self, to: str, subject: str, html: str) -> None:
        """Deliver the message or raise :class:`MailerError`."""
        if not self.configured:
            raise MailerError("email is not configured: set SMTPServer and SMTPFrom (or SMTPAccount)")
        try:
            message = self._message(to, subject, html)
            await asyncio.to_thread(self._deliver, message)
        except MailerError:
            raise
        except (smtplib.SMTPException, OSError, ssl.SSLError, ValueError) as exc:
            raise MailerError(self._describe(exc)) from None

    def _message(self, to: str, subject: str, html: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.config.from_address
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        domain = self.config.from_address.rpartition("@")[2] or "tollway.local"
        message["Message-ID"] = f"<{uuid.uuid4().hex}@{domain}>"
        message.set_content(html, subtype="html")
        return message

    def _deliver(self, message: EmailMessage) -> None:
        config = self.config
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if config.transport == "ssl":
            smtp = smtplib.SMTP_SSL(config.server, config.port, timeout=SMTP_TIMEOUT, context=context)
        else:
            smtp = smtplib.SMTP(config.server, config.port, timeout=SMTP_TIMEOUT)
        with smtp:
            smtp.ehlo()
            if config.transport != "ssl":
                if smtp.has_extn("starttls"):
                    smtp.starttls(context=context)
                    smtp.ehlo()
                elif config.transport == "starttls":
                    raise MailerError(
                        f"the SMTP server {config.server}:{config.port} does not offer STARTTLS, "
                        "which port 587 requires; enable SMTPSSLEnabled or use another port"
                    )
            if config.account:
                smtp.login(config.account, config.password)
            smtp.send_message(message)

    def _describe(self, exc: BaseException) -> str:
        config = self.config
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            reason = f"the server refused the login of {config.account!r} ({exc.smtp_code})"
        elif isinstance(exc, smtplib.SMTPRecipientsRefused):
            reason = "the server refused the recipient"
        elif isinstance(exc, smtplib.SMTPResponseException):
            reason = f"the server answered {exc.smtp_code} {_text(exc.smtp_error)}"
        else:
            reason = str(exc) or type(exc).__name__
        reason = _scrub(reason, config.password)
        return f"cannot send email through {config.server}:{config.port}: {reason}"


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


def _scrub(text: str, secret: str) -> str:
    """A server may echo what it was sent; the password must never reach a log or a client."""
    return text.replace(secret, "***") if secret else text
