"""Who may talk to the receiver (``--allow AE[@HOST]``), and where its peers listen
(``--peer AE@HOST:PORT``, for Storage Commitment reports on a new association)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from dicomcommit.errors import UsageError

_AE_MAX = 16


def check_ae_title(title: str, what: str = "AE title") -> str:
    """*title* as DICOM carries it (1 to 16 characters of the default repertoire, no backslash
    or control character; leading and trailing spaces are not significant).

    Raises:
        UsageError: naming *what* and the value.
    """
    stripped = title.strip(" ")
    if not stripped or len(stripped) > _AE_MAX:
        raise UsageError(f"{what} must be 1 to {_AE_MAX} characters, not {title!r}")
    if any(c == "\\" or not (" " <= c <= "~") for c in stripped):
        raise UsageError(f"{what} {title!r} has a character an AE title cannot have (backslash, control, non-ASCII)")
    return stripped


@dataclass(frozen=True)
class Allowed:
    """One ``--allow`` entry: a calling AE title, from any host or from the addresses of *host*."""

    ae_title: str
    host: str | None = None
    addresses: frozenset[str] = frozenset()

    def admits(self, ae_title: str, address: str) -> bool:
        """Whether a peer calling as *ae_title* from *address* matches this entry."""
        return ae_title.strip(" ") == self.ae_title and (self.host is None or _normal(address) in self.addresses)


def parse_allow(entries: Iterable[str]) -> tuple[Allowed, ...]:
    """``AE`` or ``AE@HOST`` entries; a host name is resolved now, to every address it has.

    Raises:
        UsageError: a bad AE title, or a host that does not resolve.
    """
    allowed = []
    for entry in entries:
        title, at, host = entry.rpartition("@") if "@" in entry else (entry, "", "")
        title = check_ae_title(title, f"--allow {entry!r}: the AE title")
        if not at:
            allowed.append(Allowed(title))
            continue
        if not host:
            raise UsageError(f"--allow {entry!r}: no host after '@' (write AE, or AE@HOST)")
        allowed.append(Allowed(title, host, frozenset(_addresses(host, f"--allow {entry!r}"))))
    return tuple(allowed)


@dataclass(frozen=True)
class Peer:
    """Where the AE *ae_title* accepts associations."""

    ae_title: str
    host: str
    port: int


def parse_peers(entries: Iterable[str]) -> dict[str, Peer]:
    """``AE@HOST:PORT`` entries, by AE title (``[::1]`` for an IPv6 address).

    Raises:
        UsageError: a malformed entry, a port out of range, or one AE title given twice.
    """
    peers: dict[str, Peer] = {}
    for entry in entries:
        title, at, address = entry.rpartition("@")
        host, colon, port_text = address.rpartition(":")
        if not at or not colon or not host:
            raise UsageError(f"--peer {entry!r}: write AE@HOST:PORT")
        title = check_ae_title(title, f"--peer {entry!r}: the AE title")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"--peer {entry!r}: the port must be 1 to 65535, not {port_text!r}")
        host = host.removeprefix("[").removesuffix("]")
        if title in peers:
            raise UsageError(f"--peer: {title!r} is given twice")
        peers[title] = Peer(title, host, int(port_text))
    return peers


def _addresses(host: str, what: str) -> set[str]:
    try:
        return {_normal(host)} if _is_address(host) else {_normal(str(info[4][0])) for info in
                                                          socket.getaddrinfo(host, None)}  # fmt: skip
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"{what}: cannot resolve {host!r} ({exc})") from exc


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _normal(address: str) -> str:
    """An address as one spelling: IPv4-mapped IPv6 (``::ffff:10.0.0.1``) as the IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)
