"""Listing operations is paged below the payload limit: over NATS, over HTTP and in the CLI's client."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.client.aio import AsyncClient
from ktrdr.natsd import NatsServer
from subjects import limits, names, roles
from subjects.models import Operation, OpList, OpStatus, decode
from tests.conftest import auth
from tests.support import auth_headers

OPS = 2_000


@pytest.fixture
async def many_ops(coordinator: Coordinator) -> set[str]:
    """About 2 MB of records, written straight into the coordinator's bucket (no worker runs them)."""
    ids = [f"listed-{i:05d}" for i in range(OPS)]
    records = [Operation(op_id=op_id, type="dummy", status=OpStatus.COMPLETED, params={"note": "n" * 600})
               for op_id in ids]
    for start in range(0, OPS, 250):
        await asyncio.gather(*(coordinator.ops.create(op) for op in records[start:start + 250]))
    return set(ids)


async def test_a_list_of_2000_ops_comes_in_pages_under_the_payload_limit(
        coordinator: Coordinator, many_ops: set[str], nc: Client) -> None:
    subject = f"{names.SERVICE_GROUP}.{names.SERVICE_LIST}"
    seen: list[str] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        reply = await nc.request(subject, json.dumps({"limit": 10_000, "offset": offset}).encode(), timeout=5)
        assert not (reply.headers and reply.headers.get("Nats-Service-Error")), reply.headers
        assert len(reply.data) < limits.NATS_MAX_PAYLOAD
        page = decode(OpList, reply.data)
        assert page.total == OPS and page.offset == offset and page.operations
        assert len(page.operations) <= limits.MAX_LIST_PAGE_OPS
        assert page.truncated == (page.next_offset is not None)
        seen += [o.op_id for o in page.operations]
        offset, pages = page.next_offset, pages + 1
    assert pages >= 3  # ~1 KB each: fewer than 1000 fit in a page's bytes
    assert len(seen) == len(set(seen)) == OPS and set(seen) == many_ops


async def test_the_client_follows_pages_until_it_has_as_many_ops_as_asked(
        nats_server: NatsServer, coordinator: Coordinator, many_ops: set[str]) -> None:
    async with AsyncClient(nats_url=nats_server.url, auth=auth(roles.CLIENT)) as client:
        some = await client.list(limit=1_500)
        assert len(some.operations) == len({o.op_id for o in some.operations}) == 1_500
        assert some.total == OPS and some.next_offset == 1_500
        every = await client.list(limit=5_000)
        assert {o.op_id for o in every.operations} == many_ops and every.next_offset is None


async def test_the_http_list_is_paged_and_bounded_too(coordinator: Coordinator, many_ops: set[str]) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{coordinator.api_port}",
                                 headers=auth_headers(coordinator)) as api:
        first = (await api.get("/api/v1/operations", params={"limit": "5000"})).json()
        assert first["total"] == OPS and first["limit"] == limits.MAX_LIST_PAGE_OPS and first["truncated"]
        assert 0 < len(first["operations"]) <= limits.MAX_LIST_PAGE_OPS
        assert first["next_offset"] == len(first["operations"])
        rest = (await api.get("/api/v1/operations", params={"limit": "5000", "offset": first["next_offset"]})).json()
        assert rest["offset"] == first["next_offset"]
        assert not {o["op_id"] for o in first["operations"]} & {o["op_id"] for o in rest["operations"]}
