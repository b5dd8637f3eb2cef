"""The SMTP sender against a real (tiny, local) SMTP server, and that server itself: ``SmtpSink``
speaks just enough SMTP (EHLO/HELO, AUTH PLAIN, MAIL FROM, RCPT TO, DATA, QUIT) for smtplib and
keeps what it receives. The user-route tests use it too."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage

import pytest

from tollway.ops.mailer import Mailer, MailerError, SmtpConfig, Transport


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def html(self) -> str:
        body = self.message.get_body(("html",))
        assert body is not None
        return str(body.get_content())


@dataclass
class SmtpSink:
    """A local SMTP server on a free port. ``password`` set: AUTH PLAIN must present it."""

    password: str | None = None
    received: list[Received] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender, recipients = "", []

        async def reply(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await reply("220 sink ESMTP ready")
        try:
            while raw := await reader.readline():
                line = raw.decode(errors="replace").rstrip("\r\n")
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    await reply("250-sink\r\n250-AUTH PLAIN\r\n250 8BITMIME")
                elif verb == "HELO":
                    await reply("250 sink")
                elif verb == "AUTH":
                    await reply(self._auth(line))
                elif verb == "MAIL":
                    sender, recipients = line.split(":", 1)[1].strip().strip("<>").split(">")[0], []
                    await reply("250 OK")
                elif verb == "RCPT":
                    recipients.append(line.split(":", 1)[1].strip().strip("<>"))
                    await reply("250 OK")
                elif verb == "DATA":
                    await reply("354 end with <CRLF>.<CRLF>")
                    self._store(sender, recipients, await self._read_data(reader))
                    await reply("250 OK queued")
                elif verb in ("RSET", "NOOP"):
                    await reply("250 OK")
                elif verb == "QUIT":
                    await reply("221 bye")
                    break
                else:
                    await reply("502 command not implemented")
        finally:
            writer.close()

    def _auth(self, line: str) -> str:
        parts = line.split()
        if len(parts) != 3 or parts[1].upper() != "PLAIN":
            return "504 only AUTH PLAIN with an initial response"
        _, user, password = base64.b64decode(parts[2]).decode().split("\0")
        if self.password is not None and password != self.password:
            return f"535 authentication failed for {user} with password {password}"
        self.logins.append(user)
        return "235 authenticated"

    @staticmethod
    async def _read_data(reader: asyncio.StreamReader) -> bytes:
        lines = []
        while (raw := await reader.readline()) not in (b".\r\n", b""):
            lines.append(raw[1:] if raw.startswith(b"..") else raw)
        return b"".join(lines)

    def _store(self, sender: str, recipients: list[str], data: bytes) -> None:
        message = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(Received(sender, recipients, message))


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    server = SmtpSink()
    await server.start()
    yield server
    await server.stop()


def config(port: int, **overrides: object) -> SmtpConfig:
    values: dict[str, object] = {
        "server": "127.0.0.1",
        "port": port,
        "account": "",
        "sender": "noreply@tollway.test",
        "password": "",
        "ssl_enabled": False,
    }
    values.update(overrides)
    return SmtpConfig(**values)  # type: ignore[arg-type]


async def test_send_delivers_html_with_headers(sink: SmtpSink) -> None:
    await Mailer(config(sink.port)).send("bob@example.com", "Hello Bob", "<p>Your code is <b>123456</b></p>")
    assert len(sink.received) == 1
    mail = sink.received[0]
    assert mail.sender == "noreply@tollway.test"
    assert mail.recipients == ["bob@example.com"]
    assert mail.message["Subject"] == "Hello Bob"
    assert mail.message["From"] == "noreply@tollway.test"
    assert mail.message["Message-ID"]
    assert "<b>123456</b>" in mail.html
    assert sink.logins == []  # no account: no login


async def test_logs_in_when_an_account_is_set(sink: SmtpSink) -> None:
    sink.password = "s3cret-smtp-pass"
    mailer = Mailer(config(sink.port, account="mailer@tollway.test", password="s3cret-smtp-pass", sender=""))
    await mailer.send("bob@example.com", "Hi", "<p>hi</p>")
    assert sink.logins == ["mailer@tollway.test"]
    assert sink.received[0].message["From"] == "mailer@tollway.test"  # SMTPFrom falls back to the account


async def test_refused_login_is_reported_without_the_password(sink: SmtpSink) -> None:
    sink.password = "the-right-one"
    mailer = Mailer(config(sink.port, account="mailer@tollway.test", password="wrong-pass-XYZ"))
    with pytest.raises(MailerError) as caught:
        await mailer.send("bob@example.com", "Hi", "<p>hi</p>")
    message = str(caught.value)
    assert "wrong-pass-XYZ" not in message
    assert "refused the login" in message and f"127.0.0.1:{sink.port}" in message
    assert sink.received == []


async def test_unreachable_server_and_missing_configuration() -> None:
    listener = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    with pytest.raises(MailerError, match=f"cannot send email through 127.0.0.1:{port}"):
        await Mailer(config(port, password="pw-never-shown")).send("a@b.co", "s", "<p>x</p>")
    with pytest.raises(MailerError, match="not configured"):
        await Mailer(config(port, server="")).send("a@b.co", "s", "<p>x</p>")


class _As587(SmtpConfig):
    """The sink's real port, with the policy port 587 gets."""

    @property
    def transport(self) -> Transport:
        return "starttls"


async def test_port_587_requires_starttls(sink: SmtpSink) -> None:
    """The sink offers no STARTTLS: where it is required that is an error, never a plain login."""
    mailer = Mailer(_As587("127.0.0.1", sink.port, "u", "", "pw-secret", False))
    with pytest.raises(MailerError, match="does not offer STARTTLS") as caught:
        await mailer.send("a@b.co", "s", "<p>x</p>")
    assert "pw-secret" not in str(caught.value)
    assert sink.logins == [] and sink.received == []


def test_transport_policy() -> None:
    assert config(587).transport == "starttls"
    assert config(465).transport == "ssl"
    assert config(2525, ssl_enabled=True).transport == "ssl"
    assert config(25).transport == "opportunistic"
