"""Settings: TOML file, RATCHET_* overrides, typos and unsafe combinations refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings, SettingsError


def test_defaults_work_out_of_the_box() -> None:
    s = Settings.load(env={})
    assert (s.host, s.port, s.data_dir) == ("127.0.0.1", 8470, "./data")
    assert s.db_path == Path("data/ratchet.duckdb")


def test_file_then_env_override_nested(tmp_path: Path) -> None:
    f = tmp_path / "r.toml"
    f.write_text('port = 9000\ndata_dir = "/srv/r"\n[writer]\nmax_batch_rows = 10\n')
    s = Settings.load(
        f, env={"RATCHET_PORT": "9100", "RATCHET_WRITER__MAX_QUEUE_ROWS": "77", "RATCHET_URL": "x"}
    )
    assert (s.port, s.data_dir, s.writer.max_batch_rows, s.writer.max_queue_rows) == (9100, "/srv/r", 10, 77)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"RATCHET_PROT": "1"}, "unknown field `prot`"),
        ({"RATCHET_PORT": "eighty"}, "port"),
        ({"RATCHET_WRITER__MAX_BATCH_ROWS": "0"}, "max_batch_rows"),
        ({"RATCHET_AUTH_DISABLED": "true", "RATCHET_HOST": "0.0.0.0"}, "loopback"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_problem(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        Settings.load(env=env)


def test_a_bad_value_names_where_it_was_set(tmp_path: Path) -> None:
    """The variable, flag or file that gave the faulty value, not only its key."""
    f = tmp_path / "r.toml"
    f.write_text("port = 99999\n[writer]\nmax_batch_rows = 10\n")

    def message(path: Path | None, env: dict[str, str], **overrides: object) -> str:
        with pytest.raises(SettingsError) as caught:
            Settings.load(path, env=env, overrides=overrides)
        return str(caught.value)

    assert message(f, {}).endswith(f"at `$.port` (from the settings file {f})")
    assert message(f, {"RATCHET_PORT": "0"}).endswith("at `$.port` (from RATCHET_PORT)")
    assert message(None, {"RATCHET_WRITER__MAX_BATCH_ROWS": "0"}).endswith(
        "(from RATCHET_WRITER__MAX_BATCH_ROWS)"
    )
    assert message(None, {}, **{"gateway.port": 70000}).endswith(
        "at `$.gateway.port` (from the command line)"
    )
    assert message(None, {"RATCHET_PROT": "1"}).endswith("unknown field `prot` (from RATCHET_PROT)")
    assert message(None, {"RATCHET_WRITER__ROWS": "1"}).endswith("(from RATCHET_WRITER__ROWS)")
