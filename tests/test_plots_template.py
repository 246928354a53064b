"""`dvc plots show` draws offline: the project's HTML template carries Vega, Vega-Lite and
Vega-Embed inlined (DVC's default page loads them from a CDN), as the npm packages ship
them, with their licences."""

from __future__ import annotations

import configparser
import hashlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / ".dvc" / "plots" / "index.html"
LICENSES = REPO / ".dvc" / "plots" / "LICENSES.md"


def inlined_scripts(html: str) -> dict[str, str]:
    found = re.findall(r'<script data-package="([^"]+)">\n(.*?)\n</script>', html, re.DOTALL)
    return dict(found)


def test_dvc_uses_the_template() -> None:
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert (REPO / ".dvc" / config["plots"]["html_template"]) == TEMPLATE


def test_the_template_loads_nothing_from_the_network() -> None:
    html = TEMPLATE.read_text()
    assert "{plot_divs}" in html  # where DVC puts the plots
    assert "{scripts}" not in html  # DVC's CDN script tags
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert set(inlined_scripts(html)) == {"vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"}


def test_each_inlined_script_is_the_published_file_with_its_licence() -> None:
    table = re.findall(
        r"^\| (\S+) \| (\S+) \| \S+ \| ([0-9a-f]{64}) \|$", LICENSES.read_text(), re.M
    )
    recorded = {f"{name}@{version}": digest for name, version, digest in table}
    for package, code in inlined_scripts(TEMPLATE.read_text()).items():
        assert hashlib.sha256(code.encode()).hexdigest() == recorded[package], package
        name, version = package.split("@")
        assert f"## {name} {version}" in LICENSES.read_text()
    assert LICENSES.read_text().count("Redistribution and use in source and binary forms") == 3
