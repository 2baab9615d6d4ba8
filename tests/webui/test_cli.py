"""``whispertune webui``'s flags and the bind/auth rules."""

from __future__ import annotations

import pytest

from whispertune.cli import build_parser
from whispertune.network import is_loopback
from whispertune.webui.app import parse_auth


def test_flags_and_defaults():
    ns = build_parser().parse_args(["webui"])
    assert ns.func.__module__ == "whispertune.cli.webui"
    ns = build_parser().parse_args(["webui", "--host", "0.0.0.0", "--port", "8080",
                                    "--runs-dir", "r", "--auth", "u:p:w"])
    assert (ns.host, ns.port, str(ns.runs_dir), ns.auth) == ("0.0.0.0", 8080, "r", "u:p:w")


def test_auth_and_loopback():
    assert parse_auth("u:p:w") == ("u", "p:w") and parse_auth(None) is None
    with pytest.raises(ValueError):
        parse_auth("nopassword")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
