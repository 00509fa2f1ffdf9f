"""What Claude's answers cost: a price table in USD per million tokens.

Input, output, cache write (5-minute cache) and cache read are priced separately; the Message
Batches API costs half.  The defaults are Anthropic's list prices as published when this was
written; a config can override or extend them (``--prices prices.json``), and a model missing from
the table is reported with cost ``None`` rather than a made-up figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

BATCH_DISCOUNT = 0.5


class Price(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float
    output: float
    cache_write: float
    cache_read: float


def _list_price(input_usd: float, output_usd: float) -> Price:
    # Anthropic prices 5-minute cache writes at 1.25x and cache reads at 0.1x the input price.
    return Price(input=input_usd, output=output_usd, cache_write=input_usd * 1.25, cache_read=input_usd * 0.1)


#: Longest matching prefix wins, so dated model ids find their family.
DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4-5": _list_price(5.0, 25.0),
    "claude-opus-4-1": _list_price(15.0, 75.0),
    "claude-opus-4": _list_price(15.0, 75.0),
    "claude-sonnet-4-5": _list_price(3.0, 15.0),
    "claude-sonnet-4": _list_price(3.0, 15.0),
    "claude-3-7-sonnet": _list_price(3.0, 15.0),
    "claude-3-5-sonnet": _list_price(3.0, 15.0),
    "claude-haiku-4-5": _list_price(1.0, 5.0),
    "claude-3-5-haiku": _list_price(0.8, 4.0),
    "claude-3-haiku": _list_price(0.25, 1.25),
}


def price_for(model: str, table: Mapping[str, Price] | None = None) -> Price | None:
    table = DEFAULT_PRICES if table is None else table
    matches = [prefix for prefix in table if model.startswith(prefix)]
    return table[max(matches, key=len)] if matches else None


def load_prices(raw: Mapping[str, Any]) -> dict[str, Price]:
    """The default table updated with ``{model prefix: {input, output, cache_write?, cache_read?}}``."""
    table = dict(DEFAULT_PRICES)
    for prefix, value in raw.items():
        if not isinstance(value, Mapping) or "input" not in value or "output" not in value:
            raise ValueError(f"price for {prefix!r} needs 'input' and 'output' (USD per million tokens)")
        base = _list_price(float(value["input"]), float(value["output"]))
        table[prefix] = base.model_copy(
            update={k: float(v) for k, v in value.items() if k in Price.model_fields}
        )
    return table


def cost(usage: Mapping[str, Any], price: Price | None, batch: bool = False) -> float | None:
    """USD for one answer's usage; None when the model has no price."""
    if price is None:
        return None
    total = (
        (usage.get("input_tokens") or 0) * price.input
        + (usage.get("output_tokens") or 0) * price.output
        + (usage.get("cache_creation_input_tokens") or 0) * price.cache_write
        + (usage.get("cache_read_input_tokens") or 0) * price.cache_read
    ) / 1_000_000
    return total * (BATCH_DISCOUNT if batch else 1.0)
