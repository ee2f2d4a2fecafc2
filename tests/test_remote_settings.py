"""The Jupyter Server settings: kaimon.json entries, the command line, where tokens come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from remote import env

from kaimon_kernel._settings import SettingsError, load_settings
from kaimon_kernel.server._run import jupyter_providers


def test_kaimon_json_lists_jupyter_servers_with_token_files_and_projects(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    config = tmp_path / "kaimon.json"
    config.write_text(
        json.dumps(
            {
                "jupyter": [
                    {"url": "https://hub.example.org/user/alice/", "token_file": str(token)},
                    {"url": "http://127.0.0.1:8888", "projects": ["work"]},
                ]
            }
        )
    )
    with env(JUPYTER_TOKEN="from-env"):
        settings = load_settings(config_path=config)
        first, second = jupyter_providers(settings)
    assert first.api.url == "https://hub.example.org/user/alice/"  # type: ignore[attr-defined]
    assert first.api.token == "s3cret"  # type: ignore[attr-defined]
    assert second.api.token == "from-env" and second.projects == ["work"]  # type: ignore[attr-defined]
    assert "s3cret" not in repr(settings) + repr(first) + repr(first.api)  # type: ignore[attr-defined]


def test_the_command_line_repeats_jupyter_and_a_bad_url_names_its_source(tmp_path: Path) -> None:
    settings = load_settings(
        {"jupyter": [{"url": "http://a:1/"}, {"url": "http://b:2/"}]},
        config_path=tmp_path / "none.json",
    )
    assert [s.url for s in settings.jupyter] == ["http://a:1/", "http://b:2/"]
    with pytest.raises(SettingsError, match="not an http"):
        load_settings({"jupyter": [{"url": "hub.example.org"}]}, config_path=tmp_path / "n.json")


def test_an_unreadable_token_file_is_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings(
        {"jupyter": [{"url": "http://a:1/", "token_file": str(tmp_path / "missing")}]},
        config_path=tmp_path / "none.json",
    )
    with pytest.raises(SettingsError, match="cannot read the Jupyter token file"):
        jupyter_providers(settings)
