"""Money at the catalog's edges: JSON in (numbers or strings) to Decimal, rows out with
Decimals as exact strings (JSON numbers would go through floats in most clients)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg

from crosslogic.db.rows import as_dict

_PLAIN = re.compile(r"^[0-9]+(\.[0-9]+)?$")  # no sign, exponent, spaces, NaN or Infinity


def as_decimal(value: Any) -> Decimal | None:
    """A finite Decimal from a JSON number or a plain decimal string (``"0.25"``); None for
    anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str) and not _PLAIN.fullmatch(value):
        return None
    try:
        # repr: the shortest text that reads back as the same float (0.2, not 0.2000...011)
        number = Decimal(repr(value) if isinstance(value, float) else value)
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def plain_row(record: asyncpg.Record | None) -> dict[str, Any]:
    """``as_dict(record)`` with every Decimal as its exact text."""
    return {k: str(v) if isinstance(v, Decimal) else v for k, v in as_dict(record).items()}
