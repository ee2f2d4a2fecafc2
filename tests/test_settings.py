"""Settings: one precedence (command line > KAIMON_* > kaimon.json > defaults), clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kaimon_kernel._settings import LaunchSettings, Settings, SettingsError, load_settings
from kaimon_kernel.server._run import server_options


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("PROMOTE_AFTER", "CANCEL_GRACE", "AUTO_START", "PROJECTS", "PORT", "HOST"):
        monkeypatch.delenv(f"KAIMON_{name}", raising=False)
    return tmp_path / "kaimon.json"


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_defaults_apply_when_nothing_is_set(config: Path) -> None:
    settings = load_settings(config_path=config)
    assert (settings.promote_after, settings.cancel_grace, settings.auto_start) == (30, 3, True)
    assert (settings.host, settings.port, settings.http, settings.auth) == (
        "127.0.0.1",
        2828,
        False,
        True,
    )
    assert settings.projects == []
    assert settings.cwd == Path.cwd()


def test_the_command_line_beats_the_environment_which_beats_the_file(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(config, {"promote_after": 5, "cancel_grace": 7, "port": 3000})
    monkeypatch.setenv("KAIMON_PROMOTE_AFTER", "6")
    monkeypatch.setenv("KAIMON_CANCEL_GRACE", "8")
    settings = load_settings({"promote_after": 9, "cancel_grace": None}, config_path=config)
    assert settings.promote_after == 9  # flag
    assert settings.cancel_grace == 8  # environment (the flag was not given)
    assert settings.port == 3000  # file
    assert settings.auto_start is True  # default


def test_projects_come_from_the_environment_separated_like_path(
    config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write(config, {"projects": ["/from/file"]})
    monkeypatch.setenv("KAIMON_PROJECTS", f"{tmp_path}/a:~/b")
    projects = load_settings(config_path=config).projects
    assert projects == [tmp_path / "a", Path.home() / "b"]


@pytest.mark.parametrize(
    ("flags", "env", "file", "expected"),
    [
        ({"cancel_grace": -1}, {}, {}, "--cancel-grace -1: Input should be greater than or equal"),
        ({}, {"KAIMON_PROMOTE_AFTER": "soon"}, {}, "KAIMON_PROMOTE_AFTER='soon': Input should"),
        ({}, {"KAIMON_PORT": "70000"}, {}, "KAIMON_PORT='70000': Input should be less than"),
        ({}, {}, {"promote_after": True}, "'promote_after' in {file} (True): must be a number"),
        ({}, {}, {"projects": ["rel/dir"]}, "'projects' in {file} (['rel/dir']): 'rel/dir' is not"),
        ({}, {}, {"log_level": "loud"}, "'log_level' in {file} ('loud'): must be one of DEBUG"),
        ({}, {"KAIMON_CANCEL_GRACE": "nan"}, {}, "KAIMON_CANCEL_GRACE='nan': "),
    ],
)
def test_a_bad_value_is_an_error_naming_where_it_came_from(
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: dict[str, object],
    env: dict[str, str],
    file: dict[str, object],
    expected: str,
) -> None:
    write(config, file)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings(flags, config_path=config)
    assert expected.format(file=config) in str(err.value)


def test_an_unknown_key_in_the_file_is_refused_with_the_known_ones(config: Path) -> None:
    write(config, {"promot_after": 3})
    with pytest.raises(SettingsError, match=r"unknown key 'promot_after' in .*known keys: "):
        load_settings(config_path=config)


@pytest.mark.parametrize("key", ["http", "auth", "cwd"])
def test_command_line_only_settings_are_refused_in_the_file(config: Path, key: str) -> None:
    write(config, {key: False})
    with pytest.raises(SettingsError, match=f"'{key}' in .* cannot be set in a file"):
        load_settings(config_path=config)


def test_command_line_only_settings_ignore_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAIMON_AUTH", "0")
    monkeypatch.setenv("KAIMON_HTTP", "1")
    settings = load_settings(config_path=config)
    assert settings.auth is True and settings.http is False


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_broken_file_is_an_error_naming_it(config: Path, text: str) -> None:
    config.write_text(text)
    with pytest.raises(SettingsError, match=str(config)):
        load_settings(config_path=config)


def test_server_options_carry_the_settings(tmp_path: Path, config: Path) -> None:
    settings = load_settings(
        {"promote_after": 0, "cancel_grace": 1.5, "auto_start": False}, config_path=config
    )
    options = server_options(settings.model_copy(update={"cwd": tmp_path}))
    assert (options.promote_after, options.cancel_grace, options.auto_start) == (0, 1.5, False)
    assert options.cwd == str(tmp_path)


def test_settings_are_frozen(config: Path) -> None:
    settings = load_settings(config_path=config)
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_launch_settings_round_trip_through_the_environment_and_are_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = LaunchSettings(autoserve=True, started_by="agent", session_key="k1", label="x").to_env()
    assert env == {
        "KAIMON_AUTOSERVE": "1",
        "KAIMON_STARTED_BY": "agent",
        "KAIMON_LABEL": "x",
        "KAIMON_SESSION_KEY": "k1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KAIMON_NAMESPACE", "")
    launch = LaunchSettings.pop_from_env()
    assert launch == LaunchSettings(
        autoserve=True, started_by="agent", session_key="k1", label="x", namespace=None
    )
    assert not any(name in os.environ for name in LaunchSettings.variables())


def test_a_bad_launch_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIMON_STARTED_BY", "robot")
    with pytest.raises(SettingsError, match="KAIMON_STARTED_BY='robot': Input should be"):
        LaunchSettings.pop_from_env()
