"""Socket addresses in configuration: listen addresses and upstream endpoints.

A *listen address* is an IP literal and a port: ``127.0.0.1:8080``, ``[::1]:8080``; port 0
lets the OS choose. An *endpoint* is a host (IP literal or DNS name) and a port 1-65535.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, NamedTuple

from pydantic import AfterValidator, Field

__all__ = [
    "Endpoint",
    "HostPort",
    "ListenAddress",
    "check_endpoint",
    "check_listen",
    "format_host_port",
    "listen_key",
    "split_host_port",
]

_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class HostPort(NamedTuple):
    """A parsed ``host:port``; ``host`` has no brackets."""

    host: str
    port: int


def split_host_port(text: str) -> HostPort:
    """Split ``host:port`` or ``[v6]:port``; raise ValueError naming what is wrong."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"{text!r}: expected [IPv6]:port, like [::1]:8080")
        host, port_text = text[1:close], text[close + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r}: expected host:port, like 127.0.0.1:8080")
        if ":" in host:
            raise ValueError(f"{text!r}: an IPv6 address goes in brackets, like [::1]:8080")
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ValueError(f"{text!r}: the port must be a number 0-65535")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"{text!r}: the port must be a number 0-65535")
    return HostPort(host, port)


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_listen(text: str) -> str:
    """Validate a listen address (IP literal and port 0-65535); answer it unchanged."""
    host, _ = split_host_port(text)
    bracketed = text.startswith("[")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{text!r}: {host!r} is not an IP address "
            "(listen on one, like 127.0.0.1:8080 or [::1]:8080)"
        ) from None
    if bracketed != (ip.version == 6):
        raise ValueError(f"{text!r}: only IPv6 addresses go in brackets")
    return text


def listen_key(text: str) -> tuple[str, int]:
    """A canonical (ip, port) for comparing listen addresses that are spelled differently."""
    host, port = split_host_port(text)
    return str(ipaddress.ip_address(host)), port


def check_endpoint(text: str) -> str:
    """Validate an endpoint (IP literal or DNS name, port 1-65535); answer it unchanged."""
    host, port = split_host_port(text)
    if port == 0:
        raise ValueError(f"{text!r}: an endpoint's port must be 1-65535")
    if text.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
        return text
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if (
            len(host) > 253
            or not all(_HOSTNAME_LABEL.match(label) for label in labels)
            or labels[-1].isdigit()
        ):
            raise ValueError(
                f"{text!r}: {host!r} is neither an IP address nor a host name"
            ) from None
    return text


ListenAddress = Annotated[
    str,
    AfterValidator(check_listen),
    Field(examples=["127.0.0.1:8080", "[::1]:8080"]),
]
"""An IP literal and a port (``127.0.0.1:8080``, ``[::1]:8080``); port 0 lets the OS choose."""

Endpoint = Annotated[
    str,
    AfterValidator(check_endpoint),
    Field(examples=["127.0.0.1:9001", "api.internal:8080"]),
]
"""An upstream ``host:port``; host is an IP literal (IPv6 in brackets) or a DNS name."""
