"""The CLI's HTTP client: errors name where the fault is."""

from __future__ import annotations

import httpx
import pytest

from service.cli import main
from service.client import RatchetClient, raise_for_error
from service.errors import AdapterLoadFailed, ServerUnreachable, UpstreamUnavailable
from tests.fixtures.server import free_port


def test_a_server_that_cannot_be_reached_is_named_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ServerUnreachable, match=r"cannot reach Ratchet at .*Is `ratchet serve` running"):
        RatchetClient(url, None).request("GET", "/v1/runs")
    assert main(["--url", url, "runs"]) == 1
    assert "cannot reach Ratchet" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["localhost:8470", "127.0.0.1:8470", "ftp://host", "http://"])
def test_a_url_without_its_scheme_is_named_with_the_fix(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", url, "runs"]) == 1
    err = capsys.readouterr().err
    assert f"{url!r} (--url, RATCHET_URL) is not an http(s) URL: write http://" in err, err


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [(502, "adapter_load_failed", AdapterLoadFailed), (503, "upstream_unavailable", UpstreamUnavailable)],
)
def test_an_error_answer_becomes_the_exception_its_code_names(status: int, code: str, expected: type) -> None:
    response = httpx.Response(status, json={"code": code, "message": "it went wrong"})
    with pytest.raises(expected, match="it went wrong"):
        raise_for_error(response)
