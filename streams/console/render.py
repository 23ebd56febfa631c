"""Pages of the console: Jinja2 templates with autoescape on, so every value that came from
an event is written into the page as text, never as markup. Data for the charts and ring
graphs goes in `<script type="application/json">` blocks through `tojson`, which escapes
`<`, `>`, `&` and `'`, so an id cannot close the block.

PII (devices, IPs, cards, phone hashes) is masked unless the viewer may see it
(`Identity.may_unmask`, the admin role) and asked to (`?unmask=1`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("streams.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def money(cents: int | None) -> str:
    """Integer minor units as a decimal amount: 123456 -> '1,234.56'."""
    if cents is None:
        return "–"
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(int(cents)), 100)
    return f"{sign}{whole:,}.{part:02d}"


def when(ms: int | None) -> str:
    """Epoch ms as UTC 'YYYY-MM-DD HH:MM:SS'."""
    if ms is None:
        return "–"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def share(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def ratio(value: float | None) -> str:
    """A liability : distributable ratio as people write one: 3.4166 -> '3.42:1', 3 -> '3:1'."""
    return "–" if value is None else f"{round(value, 2):g}:1"


def ratio_number(value: float) -> str:
    """A tick of the ratio axis: 2.0 -> '2', 2.5 -> '2.5'."""
    return f"{value:g}"


def mask(value: str | None) -> str:
    """A PII value with all but its edges hidden: 'd-5f2a91' -> 'd-****91'; an IPv4
    address keeps its first two octets. Short values are hidden whole."""
    if value is None or value == "":
        return "–"
    if value.count(".") == 3 and all(p.isdigit() for p in value.split(".")):
        a, b, _, _ = value.split(".")
        return f"{a}.{b}.*.*"
    if len(value) <= 4:
        return "*" * len(value)
    keep = 2 if len(value) < 10 else 3
    return value[:keep] + "*" * (len(value) - 2 * keep) + value[-keep:]


ENV.filters.update(
    money=money, when=when, share=share, mask=mask, ratio=ratio, ratio_number=ratio_number
)


def render(template: str, **context: Any) -> str:
    return ENV.get_template(template).render(**context)
