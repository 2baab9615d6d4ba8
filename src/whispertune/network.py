"""What the front ends that listen on a port (server, web UI) decide from the address."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only: binding anything else without a
    key or password opens the service to the network, which the front ends warn about."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
