"""The active host's request-reply service: ``ib.contract``, ``ib.head``, ``ib.bars``, ``ib.status``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from subjects import names
from subjects.data import BarsReply, ContractReply, HeadReply, IbStatus
from subjects.models import decode
from tests.host_ib.conftest import MakeHost


async def ask(nc: Client, endpoint: str, body: dict[str, Any] | str) -> Msg:
    data = body if isinstance(body, str) else json.dumps(body)
    return await nc.request(names.ib_subject(endpoint), data.encode(), timeout=5)


def error_of(msg: Msg) -> tuple[int, str]:
    assert msg.headers and "Nats-Service-Error" in msg.headers, msg.data
    body = json.loads(msg.data)
    assert body["code"] == int(msg.headers["Nats-Service-Error-Code"])
    return body["code"], body["error"]


async def test_contract_head_and_bars_answer(nc: Client, make_host: MakeHost) -> None:
    await make_host("ib1")
    contract = decode(ContractReply, (await ask(nc, names.IB_CONTRACT, {"symbol": "aapl"})).data)
    assert contract.con_id == 265598 and contract.long_name == "APPLE INC" and contract.sec_type == "STK"

    head = decode(HeadReply, (await ask(nc, names.IB_HEAD, {"symbol": "AAPL"})).data)
    assert head.earliest == datetime(2000, 1, 3, tzinfo=UTC)

    end = datetime(2024, 1, 2, tzinfo=UTC)
    bars = decode(BarsReply, (await ask(nc, names.IB_BARS, {"symbol": "AAPL", "timeframe": "1h",
                                                             "end": end.isoformat(), "count": 24})).data)
    assert len(bars.bars) == 24
    assert bars.bars[0].t == datetime(2024, 1, 1, tzinfo=UTC) and bars.bars[-1].t < end


async def test_errors_are_clear(nc: Client, make_host: MakeHost) -> None:
    host = await make_host("ib1")
    code, message = error_of(await ask(nc, names.IB_CONTRACT, {"symbol": "ZZZZ"}))
    assert code == 404 and "unknown symbol" in message and "200" in message
    code, message = error_of(await ask(nc, names.IB_CONTRACT, {"symbl": "AAPL"}))
    assert code == 400 and "symbol" in message
    code, message = error_of(await ask(nc, names.IB_HEAD, "not json"))
    assert code == 400
    code, message = error_of(await ask(nc, names.IB_BARS, {"symbol": "AAPL", "timeframe": "1w", "count": 100}))
    assert code == 400 and "at most 52" in message
    code, message = error_of(await ask(nc, names.IB_BARS, {"symbol": "AAPL", "timeframe": "2h"}))
    assert code == 400 and "timeframe" in message
    assert host.ib_status().counters["bad_requests"] == 4  # bad input is counted (and logged)


async def test_only_the_active_host_answers(nc: Client, make_host: MakeHost) -> None:
    await make_host("ib1")
    await make_host("ib2", ib_client_id=2, wait_active=False)
    for _ in range(10):
        status = decode(IbStatus, (await ask(nc, names.IB_STATUS, "")).data)
        assert status.worker_id == "ib1" and status.role == "active" and status.ib == "connected"
    assert status.accounts == ["DU1234567"] and status.server_version == 176
    assert status.pacing["remaining"] <= status.pacing["limit"]
