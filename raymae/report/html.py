"""Rendering the report pages: Jinja2 templates with HTML escaping always on.

Every value a template prints is escaped (``autoescape=True``), so a path like
``<script>.png`` or an error text from a broken file shows as text and never
becomes markup. Pictures are embedded as ``data:`` URIs (base64 characters only).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from functools import lru_cache

import jinja2


def number(value, digits: int = 4) -> str:
    """A score or threshold with ``digits`` significant digits; a dash when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


def fixed(value, decimals: int = 3) -> str:
    """A metric in [0, 1] with a fixed number of decimals; a dash for NaN (undefined for the split)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{decimals}f}"


def percent(share) -> str:
    return "–" if share is None else f"{100 * share:.1f} %"


def timestamp(value: datetime | None) -> str:
    if value is None:
        return "–"
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("raymae.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(number=number, fixed=fixed, percent=percent, timestamp=timestamp)
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)



def write_page(output: str, filename: str, page: str) -> str:
    """Write a rendered page to ``<output>/<filename>`` (local or ``s3://``); returns its URI."""
    from raymae import storage

    uri = storage.join(output, filename)
    storage.write_bytes(uri, page.encode("utf-8"))
    return uri
