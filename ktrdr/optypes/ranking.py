"""A sweep's ranking, put together from its blocks' results column by column.

A 10,000-variant sweep's ranking document is ~10 MB of JSON: every variant's parameters and metrics
in rank order. Built the plain way (decode each block, a dict per variant, rank the dicts,
``json.dumps`` the lot) it took a third of a second on the coordinator, a third of the sweep's
wall time. Here a block's JSON (``BlockResult.to_json_bytes``) is read as laid out: its head
(names, parameter values) and errors decoded, each metric column cut from the text as the tokens
the block wrote, and only the columns the ranking reads decoded (:class:`BlockColumns`). Each
variant's metrics object is then one ``%`` format of its tokens, the ranking is worked out on
columns (``Objective.order``), and each entry of the document is one ``%`` format of texts too
(``ktrdr.optypes.sweep``). The document is byte for byte ``json.dumps(doc, separators=(",", ":"),
allow_nan=False)`` of the entries in full (tests/ktrdr/optypes/test_ranking.py). A block whose text
is not laid out as expected is decoded in full and its tokens encoded again from the values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ktrdr.backtest.block import FORMAT, BlockResult

_DECODER = json.JSONDecoder()
_METRICS_AT = ',"metrics":{'
_ERRORS_AT = ',"errors":'


class _Layout(ValueError):
    """The block's text is not laid out as ``BlockResult.to_json_bytes`` writes it."""


def dumps(value: Any) -> str:
    """One value as the ranking document's ``json.dumps`` writes it."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def number_text(value: float | int | None) -> str:
    """``dumps`` of a number or None, without its call: floats as ``float.__repr__`` (json's own)."""
    if value is None:
        return "null"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
        return float.__repr__(value)
    return dumps(value)


def column_texts(column: Sequence[Any]) -> list[str]:
    """``dumps`` of each value of ``column``: a column of one type at C speed (``json`` writes an int
    and a finite float as their ``__repr__``), a string column by its distinct values, else each alone."""
    kinds = set(map(type, column))
    if kinds == {int}:
        return list(map(int.__repr__, column))
    if kinds == {float} and all(map(math.isfinite, column)):
        return list(map(float.__repr__, column))
    if kinds == {str}:
        known = {v: dumps(v) for v in set(column)}
        return [known[v] for v in column]
    return [dumps(v) for v in column]


def _object_format(keys: Sequence[str]) -> str:
    """``"{...}" % values`` with each of ``keys`` as a member (its value's text goes in ``%s``)."""
    return "{" + ",".join(dumps(k).replace("%", "%%") + ":%s" for k in keys) + "}"


@dataclass(kw_only=True)
class BlockColumns:
    """A completed block's result as the ranking reads it. ``read[m][i]``: metric ``m`` of variant
    ``i`` (each column the ranking reads; None where the block has no such metric); ``texts[i]``:
    variant ``i``'s metrics object as JSON text, every metric the block holds."""

    variants: int
    names: list[str]
    values: dict[str, list[Any]]
    errors: dict[int, str]
    read: dict[str, list[Any]]
    texts: list[str]

    def parameters(self, i: int) -> dict[str, Any]:
        return {name: self.values[name][i] for name in self.names}

    def parameter_texts(self) -> list[str]:
        """Each variant's parameters object as JSON text."""
        if not self.names:
            return ["{}"] * self.variants
        form = _object_format(self.names)
        columns = [column_texts(self.values[name]) for name in self.names]
        return [form % row for row in zip(*columns, strict=True)]

    @classmethod
    def parse(cls, data: bytes, read: Sequence[str]) -> BlockColumns:
        text = data.decode()
        try:
            return cls._cut(text, read)
        except (_Layout, ValueError, KeyError, TypeError, IndexError):
            result = BlockResult.from_json_bytes(data)
            tokens = {name: column_texts(column) for name, column in result.metrics.items()}
            return cls._made(variants=result.variants, names=result.names, values=result.values, errors=result.errors,
                             columns=result.metrics, tokens=tokens, read=read)

    @classmethod
    def _cut(cls, text: str, read: Sequence[str]) -> BlockColumns:
        at = text.rfind(_METRICS_AT)  # a quote inside a string is escaped: this is the member's own
        if at < 0:
            raise _Layout("no metrics")
        head = json.loads(text[:at] + "}")
        if head.get("format") != FORMAT or not isinstance(head.get("values"), dict):
            raise _Layout("not a block result")
        variants, wanted = int(head["variants"]), set(read)
        tokens: dict[str, list[str]] = {}
        columns: dict[str, list[Any]] = {}
        pos = at + len(_METRICS_AT)
        while text[pos] != "}":
            name, pos = _DECODER.raw_decode(text, pos)
            if not isinstance(name, str) or not text.startswith(":[", pos):
                raise _Layout("a metric is not a list")
            start = pos + 2
            end = text.find("]", start)
            if end < 0:
                raise _Layout("an unclosed list")
            if '"' in text[start:end]:  # strings may hold anything: decoded, and encoded again
                values, after = _DECODER.raw_decode(text, start - 1)
                cut = column_texts(values)
                end = after - 1
                if name in wanted:
                    columns[name] = values
            else:  # numbers, null, true, false: no commas or brackets inside a token
                cut = text[start:end].split(",") if end > start else []
                if name in wanted:
                    columns[name] = json.loads(text[start - 1:end + 1])
            if len(cut) != variants:
                raise _Layout(f"{name}: {len(cut)} values for {variants} variants")
            tokens[name] = cut
            pos = end + 1
            if text[pos] == ",":
                pos += 1
            elif text[pos] != "}":
                raise _Layout("a metric list not followed by another or the end")
        if not text.startswith(_ERRORS_AT, pos + 1):
            raise _Layout("no errors after the metrics")
        errors, end = _DECODER.raw_decode(text, pos + 1 + len(_ERRORS_AT))
        if text[end:] != "}":
            raise _Layout("more after the errors")
        return cls._made(variants=variants, names=head["names"], values=head["values"],
                         errors={int(i): message for i, message in errors.items()}, columns=columns, tokens=tokens,
                         read=read)

    @classmethod
    def _made(cls, *, variants: int, names: list[str], values: dict[str, list[Any]], errors: dict[int, str],
              columns: dict[str, list[Any]], tokens: dict[str, list[str]], read: Sequence[str]) -> BlockColumns:
        if tokens:
            form = _object_format(list(tokens))
            metric_texts = [form % row for row in zip(*tokens.values(), strict=True)]
        else:
            metric_texts = ["{}"] * variants
        return cls(variants=variants, names=names, values=values, errors=errors, texts=metric_texts,
                   read={m: columns[m] if m in columns else [None] * variants for m in read})
