"""The ceiling for bench/ingest.py: a Litestar endpoint that decodes the same log body and answers
202 without storing anything. Same server stack as `ratchet serve` (uvicorn, one process)."""

from __future__ import annotations

import sys

import uvicorn
from litestar import Litestar, Request, post

from service.capture import CaptureResult, ItemResult, decode_logs


@post("/v1/logs", status_code=202)
async def bare_logs(request: Request) -> CaptureResult:  # type: ignore[type-arg]
    items = decode_logs(await request.body())
    return CaptureResult(len(items), 0, 0, [ItemResult(i, "accepted", x.id) for i, x in enumerate(items)])


if __name__ == "__main__":
    uvicorn.run(
        Litestar([bare_logs]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False
    )
