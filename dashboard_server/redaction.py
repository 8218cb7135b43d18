"""Anonymising what the dashboard server writes down: truncated IPs, no tokens."""

from __future__ import annotations

import ipaddress
import logging
import re

from writevue_pipelines.redaction import redact_urls

_IPV4_IN_TEXT = re.compile(r"(?<![\d.])(\d{1,3}\.\d{1,3}\.\d{1,3})\.\d{1,3}(?![\d.])")
#: an unsubscribe link's one-time token (``unsubscribe``); ``redact_urls`` does /d/ and /connect/
_UNSUBSCRIBE_TOKEN = re.compile(r"/unsubscribe/(?!<token>)[^/\s?#'\"<>)\]]+")
_IPV6_IN_TEXT = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def truncate_ip(ip: str) -> str:
    """IPv4 to its /24, IPv6 to its /48 network address; anything else to '-'."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "-"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


def _scrub_ipv6(match: re.Match) -> str:
    text = match.group(0)
    try:
        if ipaddress.ip_address(text).version == 6:
            return truncate_ip(text)
    except ValueError:
        pass
    return text


def scrub(text: str) -> str:
    """Remove anything token-like after /d/, /connect/ and /unsubscribe/ and full client
    IPs from free text."""
    text = _UNSUBSCRIBE_TOKEN.sub("/unsubscribe/<token>", redact_urls(text))
    text = _IPV4_IN_TEXT.sub(lambda m: m.group(1) + ".0", text)
    return _IPV6_IN_TEXT.sub(_scrub_ipv6, text)


_installed = False

#: The logger the server announces its own address on: that address is the operator's,
#: not a client's, so the scrubber leaves it whole (``127.0.0.1``, not ``127.0.0.0``).
ANNOUNCE_LOGGER = "writevue.dashboard.listening"


def announce(message: str, *args) -> None:
    """Log the server's own address, unscrubbed (and nothing else: see ANNOUNCE_LOGGER)."""
    logging.getLogger(ANNOUNCE_LOGGER).info(message, *args)


def install_log_scrubber() -> None:
    """Scrub every log record of this process as it is created, whatever logger it goes to.

    The access log is already written redacted (see ``request_log.log_function``); this is the
    safety net for anything else, such as Tornado's uncaught-exception dumps, which print
    the request with its path and the client's address.
    """
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        if record.name == ANNOUNCE_LOGGER and not record.exc_info:
            return record
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        clean = scrub(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
