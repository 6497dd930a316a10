"""A key's allowed networks: CIDR lists checked when stored, matched against the client's address."""

from __future__ import annotations

import ipaddress


def parse_networks(value) -> list[str] | None:
    """None (any address) or a non-empty list of networks in canonical form; ValueError names the bad entry."""
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(n, str) for n in value):
        raise ValueError("allowed_networks must be a list of networks such as 10.0.0.0/8 or 2001:db8::/32, "
                         "or None for every address")
    networks = []
    for entry in value:
        try:
            networks.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"allowed_networks: {entry!r} is not an IP address or a network in CIDR form "
                             "(such as 192.0.2.0/24)") from None
    if not networks:
        raise ValueError("allowed_networks must name at least one network, or be None for every address")
    return networks


def address_in(address: str | None, networks: list[str]) -> bool:
    """Whether the client address is in one of the networks (an IPv4-mapped IPv6 address counts as IPv4)."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(network) for network in networks)
