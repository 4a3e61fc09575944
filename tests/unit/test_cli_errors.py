"""The CLI's error channel: a UserError is one line and exit 1; a bug is a traceback.

In-process (gateway.cli.main), no server.  LookupError used to be the user-error
channel, so a KeyError from a bug printed as `gateway: 'zylker'` and exit 1, as if
the user had mistyped something; these tests fail if main() catches it again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import logs
from gateway.cli import main
from gateway.errors import UserError


@pytest.fixture
def config(config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # main() points the root logger at stderr; keep pytest's capture and logging as they are.
    monkeypatch.setattr(logs, "setup", lambda *args, **kwargs: None)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path / 'absent.db'}")
    return config_dir / "gateway.toml"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["dkim", "dns", "nowhere.example"], "no [[dkim]] entry for nowhere.example in the rules: add domain"),
        (["reload"], "no running gateway found through "),
        (["export"], "no database at "),  # store.db.SchemaNotCurrent
    ],
)
def test_a_user_error_is_one_line_and_exit_1(config, capsys, argv, message):
    assert main(["-c", str(config), *argv]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"gateway: {message}"), err
    assert "Traceback" not in err


@pytest.mark.parametrize("bug", [KeyError("zylker.example"), IndexError("list index out of range"),
                                 LookupError("unknown encoding: x-bogus")])
def test_a_lookup_error_inside_a_command_is_a_bug_not_a_user_error(config, capsys, monkeypatch, bug):
    def broken_loader(directory):  # type: ignore[no-untyped-def]
        raise bug

    # The same command answers a user error above; here its rules loader has a bug.
    monkeypatch.setattr("gateway.rules.loader.load_rules", broken_loader)
    with pytest.raises(type(bug)) as raised:  # out of main(): Python prints the traceback
        main(["-c", str(config), "dkim", "dns", "zylker.example"])
    assert raised.value is bug
    assert "gateway:" not in capsys.readouterr().err


def test_user_errors_are_not_lookup_errors():
    from gateway.quarantine import ReplayError
    from gateway.records import StageError
    from gateway.store.db import SchemaNotCurrent

    assert not issubclass(UserError, LookupError)
    for error in (StageError, ReplayError, SchemaNotCurrent):
        assert issubclass(error, UserError) and not issubclass(error, LookupError), error


def test_a_wrong_command_line_exits_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["record", "show", "not-a-number"])
    assert exited.value.code == 2
    assert "invalid int value" in capsys.readouterr().err
