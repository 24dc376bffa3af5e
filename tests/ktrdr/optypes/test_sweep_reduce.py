"""The sweep's reduction: its ranking document is the very JSON of every variant's entry, metrics and
all, however its text is put together (``_RankingText`` splices each block's own metric text)."""

from __future__ import annotations

import json
from typing import Any

from ktrdr.backtest.block import BlockResult
from ktrdr.optypes.sweep import _RankingText


def _block(metrics: dict[str, list[Any]], variants: int) -> BlockResult:
    return BlockResult(strategy="s", bars=10, variants=variants, names=["p"], values={"p": list(range(variants))},
                       metrics=metrics, errors={})


def _doc(ranking: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": "ktrdr.sweep.ranking/1", "sweep": "x", "failed": [], "ranking": ranking}


def test_the_spliced_document_is_byte_for_byte_json_dumps_of_the_full_entries() -> None:
    odd = {"total_return": [1.5, -0.0, 1e-300, 12345678901234567890.0, None],
           "trades": [0, 3, 2**60, -1, 7], "flag": [True, False, None, True, False],
           "basis": ["1h bars: a, b [c] \"d\"", "é ü", "]", ",", ""],  # strings: commas, brackets, quotes
           "mixed": [1, "two", None, 4.25, "]\",["], "empty": [None] * 5}
    blocks = [(0, _block(odd, 5)), (5, _block({"total_return": [2.0, 3.0], "trades": [1, 2]}, 2))]
    texts = _RankingText()
    full: dict[int, dict[str, Any]] = {}
    for first, block in blocks:
        texts.add(first, block.to_json_bytes(), block)
        for i in range(block.variants):
            full[first + i] = {m: column[i] for m, column in block.metrics.items()}
    parameters: list[Any] = ["\x000\x00", "a,b", {"nested": "[x]"}, 3, None, "\\u0000", 7.5]
    ranking = [{"rank": k + 1, "index": index, "parameters": {"p": parameters[k]}, "metrics": {"trades": 0},
                "eligible": k % 2 == 0, "op_id": None} for k, index in enumerate([6, 2, 0, 5, 3, 1, 4])]
    got = texts.dumps(_doc(ranking))
    expected = json.dumps(_doc([{**r, "metrics": full[r["index"]]} for r in ranking]), separators=(",", ":"),
                          allow_nan=False).encode()
    assert got == expected  # a parameter that looks like a mark took the plain way, with the same bytes
    plain = [{**r, "parameters": {"p": k}} for k, r in enumerate(ranking)]
    expected = json.dumps(_doc([{**r, "metrics": full[r["index"]]} for r in plain]), separators=(",", ":"),
                          allow_nan=False).encode()
    assert texts.dumps(_doc(plain)) == expected


def test_a_block_text_laid_out_otherwise_is_encoded_again_from_its_values() -> None:
    block = _block({"a": [1.0, 2.5], "b": [None, 3]}, 2)
    texts = _RankingText()
    texts.add(0, b'{"metrics":{"b":[9,9],"a":[7,7]}}', block)  # not the block's own text: ignored
    ranking = [{"index": 1, "metrics": {}}, {"index": 0, "metrics": {}}]
    assert json.loads(texts.dumps({"ranking": ranking}))["ranking"] == [
        {"index": 1, "metrics": {"a": 2.5, "b": 3}}, {"index": 0, "metrics": {"a": 1.0, "b": None}}]
