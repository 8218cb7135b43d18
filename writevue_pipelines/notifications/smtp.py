"""Mail out through the operator's SMTP server: one connection per run, each outcome a kind.

``WRITEVUE_SMTP_URL`` says where and how: ``smtp://host:port`` (plain, for a relay on the
same host or network), ``smtp+starttls://host:587`` or ``smtps://host:465``. Credentials
come from ``WRITEVUE_SMTP_USER`` and ``WRITEVUE_SMTP_PASSWORD`` or
``WRITEVUE_SMTP_PASSWORD_FILE``, never from the URL (a URL is shown and logged far more
often than an environment variable); a login over plain ``smtp://`` is refused unless the
server is on this machine (loopback), since the password would cross the network in
clear. STARTTLS and SMTPS verify the server's certificate
and name against the system's CAs, or ``WRITEVUE_SMTP_CA_FILE``'s.

A failure is reported as a short kind ("smtp 451", "refused", "timeout", "tls"), never
with the server's text (it can repeat the address) nor the address itself.
"""

from __future__ import annotations

import ipaddress
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

from ..settings import ConfigError, Settings

_SCHEMES = {"smtp": ("plain", 25), "smtp+starttls": ("starttls", 587), "smtps": ("smtps", 465)}
NOT_CONFIGURED = "WRITEVUE_SMTP_URL is not set"


@dataclass(frozen=True)
class SmtpConfig:
    #: plain | starttls | smtps
    security: str
    host: str
    port: int
    mail_from: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpConfig | None:
        """The SMTP server to use, or None when ``WRITEVUE_SMTP_URL`` is not set; a setting
        that cannot work raises ``ConfigError`` saying which."""
        if not settings.smtp_url:
            return None
        raw = settings.smtp_url.strip()
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError:
            raise ConfigError(
                "WRITEVUE_SMTP_URL has an invalid port; give a number from 1 to 65535."
            ) from None
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ConfigError(
                "WRITEVUE_SMTP_URL must start with smtp://, smtp+starttls:// or smtps://."
            )
        if "@" in parts.netloc:
            raise ConfigError(
                "WRITEVUE_SMTP_URL must not hold a user name or password; set "
                "WRITEVUE_SMTP_USER and WRITEVUE_SMTP_PASSWORD_FILE instead."
            )
        if not parts.hostname:
            raise ConfigError("WRITEVUE_SMTP_URL names no host (smtp+starttls://host:587).")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError("WRITEVUE_SMTP_URL takes no path or query: only scheme://host:port.")
        security, default_port = _SCHEMES[scheme]
        password = settings.smtp_password
        if settings.smtp_password_file is not None:
            try:
                password = settings.smtp_password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"WRITEVUE_SMTP_PASSWORD_FILE cannot be read ({type(exc).__name__})."
                ) from None
        if password and not settings.smtp_user:
            raise ConfigError("An SMTP password is set without WRITEVUE_SMTP_USER.")
        if security == "plain" and settings.smtp_user and not _loopback(parts.hostname):
            raise ConfigError(
                "WRITEVUE_SMTP_USER is set but WRITEVUE_SMTP_URL is plain smtp:// to another "
                "machine, so the password would cross the network unencrypted; use "
                "smtp+starttls://host:587 or smtps://host:465 (plain smtp:// with a login is "
                "for a relay on this machine only)."
            )
        _, address = parseaddr(settings.mail_from)
        if "@" not in address or any(c.isspace() for c in address):
            raise ConfigError(
                "WRITEVUE_MAIL_FROM must be an address (notifications@agency.example), "
                "optionally with a name: Agency <notifications@agency.example>."
            )
        return cls(
            security=security,
            host=parts.hostname,
            port=port or default_port,
            mail_from=settings.mail_from,
            user=settings.smtp_user,
            password=password or None,
            ca_file=settings.smtp_ca_file,
            timeout_s=settings.notify_timeout_s,
        )

    def tls_context(self) -> ssl.SSLContext:
        if self.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.ca_file))
        return ssl.create_default_context()


class SendError(Exception):
    """One message not sent: ``kind`` is what is recorded ("smtp 451", "timeout", …).

    ``permanent``: the server refused this recipient or message for good (a bounce);
    ``connection``: the server could not be used at all, so the run's other messages
    would meet the same (they are not tried again in this run)."""

    def __init__(self, kind: str, *, permanent: bool = False, connection: bool = False):
        super().__init__(kind)
        self.kind, self.permanent, self.connection = kind, permanent, connection


class SmtpSender:
    """One SMTP connection for a run's messages, opened on first use and again after a
    failure; ``close`` says QUIT."""

    def __init__(self, config: SmtpConfig | None):
        self.config = config
        self._sender = parseaddr(config.mail_from)[1] if config is not None else ""
        self._client: smtplib.SMTP | None = None
        #: the connection failure that ends this run's mail (see ``SendError.connection``)
        self.down: SendError | None = None if config is not None else _not_configured()

    def send(self, message: EmailMessage | bytes, to: str) -> None:
        """Send one message to ``to``: an ``EmailMessage``, or the bytes of one as they go
        on the wire (CRLF line ends, 7-bit; ``messages.email_bytes``)."""
        if self.down is not None:
            raise self.down
        config = self.config
        assert config is not None
        sender = self._sender
        try:
            if self._client is None:
                self._client = self._connect(config)
            if isinstance(message, bytes):
                self._client.sendmail(sender, [to], message)
            else:
                self._client.send_message(message, from_addr=sender, to_addrs=[to])
        except smtplib.SMTPRecipientsRefused as exc:
            self._drop()
            code = next(iter(exc.recipients.values()))[0] if exc.recipients else 550
            raise _reply(code) from None
        except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as exc:
            self._drop()
            error = _reply(exc.smtp_code)
            if isinstance(exc, smtplib.SMTPSenderRefused):
                error.permanent = False  # our sender, not the recipient: retry, say why
            raise error from None
        except SendError as exc:
            self._drop()
            if exc.connection:
                self.down = exc
            raise
        except smtplib.SMTPServerDisconnected as exc:
            self._drop()
            # smtplib turns a read that timed out into "disconnected"
            if isinstance(exc.__context__, TimeoutError):
                self.down = SendError("timeout", connection=True)
                raise self.down from None
            raise SendError("disconnected") from None
        except smtplib.SMTPResponseException as exc:
            self._drop()
            raise _reply(exc.smtp_code) from None
        except TimeoutError:
            self._drop()
            self.down = SendError("timeout", connection=True)
            raise self.down from None
        except ssl.SSLError:
            self._drop()
            self.down = SendError("tls", connection=True)
            raise self.down from None
        except ConnectionRefusedError:
            self._drop()
            self.down = SendError("refused", connection=True)
            raise self.down from None
        except (OSError, smtplib.SMTPException):
            self._drop()
            raise SendError("network") from None

    def _connect(self, config: SmtpConfig) -> smtplib.SMTP:
        try:
            if config.security == "smtps":
                client: smtplib.SMTP = smtplib.SMTP_SSL(
                    config.host,
                    config.port,
                    timeout=config.timeout_s,
                    context=config.tls_context(),
                )
            else:
                client = smtplib.SMTP(config.host, config.port, timeout=config.timeout_s)
        except socket.gaierror:
            raise SendError("unknown host", connection=True) from None
        try:
            client.ehlo()
            if config.security == "starttls":
                if not client.has_extn("starttls"):
                    raise SendError("no starttls", connection=True)
                client.starttls(context=config.tls_context())
                client.ehlo()
            if config.user:
                try:
                    client.login(config.user, config.password or "")
                except smtplib.SMTPAuthenticationError as exc:
                    raise SendError(f"smtp {exc.smtp_code}", connection=True) from None
                except smtplib.SMTPNotSupportedError:
                    raise SendError("no smtp auth", connection=True) from None
        except BaseException:
            _close(client)
            raise
        return client

    def check(self) -> None:
        """Connect as a send would (EHLO, STARTTLS, login) and say QUIT, sending no mail
        (`writevue doctor`); a server that cannot be used raises ``SendError``."""
        if self.down is not None:
            raise self.down
        assert self.config is not None
        try:
            self._client = self._connect(self.config)
        except SendError:
            raise
        except smtplib.SMTPServerDisconnected as exc:
            timeout = isinstance(exc.__context__, TimeoutError)
            raise SendError("timeout" if timeout else "disconnected", connection=True) from None
        except smtplib.SMTPResponseException as exc:
            raise _reply(exc.smtp_code) from None
        except TimeoutError:
            raise SendError("timeout", connection=True) from None
        except ssl.SSLError:
            raise SendError("tls", connection=True) from None
        except ConnectionRefusedError:
            raise SendError("refused", connection=True) from None
        except (OSError, smtplib.SMTPException):
            raise SendError("network", connection=True) from None
        self.close()

    def _drop(self) -> None:
        if self._client is not None:
            _close(self._client)
            self._client = None

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._drop()


def _loopback(host: str) -> bool:
    """Whether ``host`` is this machine: localhost, 127.0.0.0/8 or ::1 (by name or
    address only: a name is not resolved, so DNS cannot make a remote host look local)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _not_configured() -> SendError:
    return SendError(NOT_CONFIGURED, connection=True)


def _reply(code: int) -> SendError:
    """A refusal by its reply code: 5xx permanent (a bounce), 4xx temporary."""
    return SendError(f"smtp {int(code)}", permanent=500 <= int(code) < 600)


def _close(client: smtplib.SMTP) -> None:
    try:
        client.close()
    except OSError:
        pass
