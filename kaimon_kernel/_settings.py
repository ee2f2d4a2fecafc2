"""kaimon's settings: one validated object, one precedence.

    command line  >  KAIMON_* environment  >  $JUPYTER_CONFIG_DIR/kaimon.json  >  defaults

:class:`Settings` is what ``kaimon serve`` runs with (and what later fronts read: a list of
Jupyter servers, tool allow/deny lists are new fields here). :class:`LaunchSettings` is how a
kernel was launched to be served (the kernelspec, an agent's ``start_session``): the launcher
writes it with :meth:`LaunchSettings.to_env`, the gate reads it with
:meth:`LaunchSettings.pop_from_env`.

Built on pydantic-settings rather than traitlets: the gate⇄server contract is already pydantic
models, so settings validate, coerce and report errors the same way; the environment and the
JSON file are sources in one ordered list (:meth:`Settings.settings_customise_sources`), which
*is* the precedence; kaimon.json keeps its flat ``{"promote_after": 10}`` shape, where traitlets
would want ``{"KaimonApp": {...}}`` and has no environment source; and the ``kaimon`` command
keeps its argparse subcommands instead of becoming a traitlets ``Application``. Every bad value
raises :class:`SettingsError` naming where it came from: the flag, the variable, or the file
and key.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ._errors import KaimonError
from ._paths import config_file
from .extensions._supervisor import DEFAULT_BACKOFF

__all__ = [
    "DEFAULT_CANCEL_GRACE",
    "DEFAULT_PROMOTE_AFTER",
    "ENV_PREFIX",
    "ImagesSetting",
    "JupyterServerSetting",
    "LaunchSettings",
    "Settings",
    "SettingsError",
    "ToolsSetting",
    "load_settings",
]

ENV_PREFIX = "KAIMON_"
DEFAULT_PROMOTE_AFTER = 30.0
DEFAULT_CANCEL_GRACE = 3.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Settings that only the command line (or code) may set, and why.
COMMAND_LINE_ONLY = {
    "cwd": "it is the directory `kaimon serve` runs in",
    "http": "clients that start `kaimon serve` expect stdio; pass --http to serve HTTP",
    "auth": "turning the token off must be explicit; pass --no-auth",
}
# Where load_settings() reads kaimon.json from (None: $JUPYTER_CONFIG_DIR/kaimon.json).
_config_path: ContextVar[Path | None] = ContextVar("kaimon_config_path", default=None)
# How each setting is spelled on the command line, where it is not --name-with-dashes.
FLAGS = {"auth": "--no-auth", "auto_start": "--no-auto-start"}


class SettingsError(KaimonError, ValueError):
    """A setting has a bad value; the message names its source (flag, variable or file key)."""


class _Environment(EnvSettingsSource):
    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        for name in COMMAND_LINE_ONLY:
            values.pop(name, None)
        return values


class _ConfigFile(PydanticBaseSettingsSource):
    """kaimon.json: a flat JSON object; an unknown key is an error (a typo is not ignored)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        return read_config_file(self.path, self.settings_cls)


def read_config_file(path: Path, settings_cls: type[BaseSettings]) -> dict[str, Any]:
    """The settings ``path`` holds, checked for shape and known keys (not yet validated)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise SettingsError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as err:
        raise SettingsError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise SettingsError(f'{path} must hold a JSON object, like {{"promote_after": 10}}')
    known = [n for n in settings_cls.model_fields if n not in COMMAND_LINE_ONLY]
    for key in data:
        if key in COMMAND_LINE_ONLY:
            raise SettingsError(
                f"{key!r} in {path} cannot be set in a file: {COMMAND_LINE_ONLY[key]}"
            )
        if key not in known:
            raise SettingsError(
                f"unknown key {key!r} in {path}; known keys: {', '.join(sorted(known))}"
            )
    return data


class ToolsSetting(BaseModel):
    """kaimon.json ``"tools"``: which tools agents see (shell-style patterns over MCP names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: list[str] | None = Field(None, description="only these tools are shown")
    deny: list[str] = Field(default_factory=list, description="these tools are hidden")


class ImagesSetting(BaseModel):
    """kaimon.json ``"images"``: how images come back to the agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_per_reply: int = Field(4, ge=0, description="images inline in one reply at most")
    links: bool = Field(
        False, description="return images as resource links (read on demand), not inline"
    )


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number of seconds")
    return value


class JupyterServerSetting(BaseModel):
    """One Jupyter Server (or kernel gateway) whose served kernels kaimon lists: its URL,
    and a file holding its token (else ``JUPYTER_TOKEN``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1)
    token_file: Path | None = None
    #: Directories (relative to the server's root) where agents may start kernels there.
    projects: list[str] = Field(default_factory=list)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.strip().startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s):// URL of a Jupyter Server")
        return value.strip()

    def token(self) -> tuple[str | None, str]:
        """The token and where it came from (for errors; never the token itself)."""
        if self.token_file is not None:
            path = self.token_file.expanduser()
            try:
                return path.read_text().strip() or None, f"the token file {path}"
            except OSError as err:
                raise SettingsError(
                    f"cannot read the Jupyter token file {path}: {err.strerror or err}"
                ) from None
        return os.environ.get("JUPYTER_TOKEN") or None, "the JUPYTER_TOKEN variable"


class Settings(BaseSettings):
    """How ``kaimon serve`` runs. Build it with :func:`load_settings` to get the precedence
    (command line > ``KAIMON_*`` environment > kaimon.json > defaults); ``Settings(**values)``
    in code counts as the command line."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    promote_after: float = Field(
        DEFAULT_PROMOTE_AFTER,
        description="seconds before a running ex returns an eval_id and continues as a "
        "background job; <= 0: never",
    )
    cancel_grace: float = Field(
        DEFAULT_CANCEL_GRACE,
        ge=0,
        description="seconds cancel_eval waits for code to stop by itself before it "
        "interrupts the kernel",
    )
    auto_start: bool = Field(True, description="start a kernel when none is served")
    projects: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="directories where agents may start kernels (absolute paths; in the "
        f"environment, separated by {os.pathsep!r})",
    )
    runtime_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="more Jupyter runtime dirs to find served kernels in, beside this "
        "server's own (for kernels started with another JUPYTER_RUNTIME_DIR; absolute paths; "
        f"in the environment, separated by {os.pathsep!r})",
    )
    http: bool = Field(False, description="serve streamable HTTP instead of stdio")
    host: str = Field("127.0.0.1", min_length=1, description="HTTP bind address")
    port: int = Field(2828, ge=1, le=65535, description="HTTP port")
    auth: bool = Field(True, description="HTTP needs the bearer token")
    log_level: str = Field("WARNING", description="logging level on stderr")
    kernel_launcher: list[str] = Field(
        default_factory=list,
        description="a command put in front of the kernels kaimon starts, e.g. "
        '["bwrap", "--unshare-net", ...]; {project} and {runtime_dir} in it are replaced. '
        "Such kernels talk over ipc (files in the runtime dir), not TCP",
    )
    cwd: Path = Field(default_factory=Path.cwd, description="the server's working directory")
    tools: ToolsSetting = Field(
        default_factory=ToolsSetting,
        description='tools shown to agents: {"allow": [...]} or {"deny": [...]} (names or '
        "shell patterns)",
    )
    images: ImagesSetting = Field(default_factory=ImagesSetting, description="image replies")
    heartbeat: float = Field(
        5.0,
        ge=0,
        description="seconds without output in a running call before a progress "
        "notification says it still runs (keeps clients that reset their timeout on "
        "progress waiting); 0: never",
    )
    mirror: bool = Field(
        True,
        description="the live view starts on in kernels agents start (false: paused until "
        "set_option or %kaimon mirror on); running servers follow a change in kaimon.json",
    )
    extension_backoff: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: list(DEFAULT_BACKOFF),
        min_length=1,
        description="seconds before a crashed extension is started again (the last repeats)",
    )
    jupyter: list[JupyterServerSetting] = Field(
        default_factory=list,
        description='Jupyter Servers whose served kernels are listed too: [{"url": ..., '
        '"token_file": ...}] (the token from token_file, else JUPYTER_TOKEN)',
    )

    @field_validator("promote_after", "cancel_grace", "heartbeat", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number of seconds, not true/false")
        return value

    @field_validator("promote_after", "cancel_grace", "heartbeat")
    @classmethod
    def _seconds(cls, value: float) -> float:
        return _finite(value)

    @field_validator("projects", "runtime_dirs", mode="before")
    @classmethod
    def _split_projects(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment
            return [p for p in value.split(os.pathsep) if p.strip()]
        return value

    @field_validator("projects", "runtime_dirs")
    @classmethod
    def _absolute_projects(cls, value: list[Path]) -> list[Path]:
        out = []
        for path in value:
            path = path.expanduser()
            if not path.is_absolute():
                raise ValueError(f"{str(path)!r} is not an absolute path")
            out.append(path)
        return out

    @field_validator("kernel_launcher")
    @classmethod
    def _launcher(cls, value: list[str]) -> list[str]:
        if any(not part.strip() for part in value):
            raise ValueError("every part of the command must be a non-empty string")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return value.strip().removeprefix("[").removesuffix("]")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The order is the precedence; defaults come last by themselves.
        return (
            init_settings,
            _Environment(settings_cls),
            _ConfigFile(settings_cls, _config_path.get() or config_file()),
        )


def load_settings(
    cli: Mapping[str, Any] | None = None, *, config_path: Path | None = None
) -> Settings:
    """Settings from the command line (``cli``: only the flags given), the environment,
    kaimon.json (``config_path``, default ``$JUPYTER_CONFIG_DIR/kaimon.json``) and defaults.

    Raises :class:`SettingsError` naming the source of every bad value.
    """
    given = {k: v for k, v in (cli or {}).items() if v is not None}
    path = config_path or config_file()
    for name in given:
        if name not in Settings.model_fields:
            raise SettingsError(f"{name!r} is not a kaimon setting")
    token = _config_path.set(path)
    try:
        return Settings(**given)
    except ValidationError as err:
        raise SettingsError(_describe(err, given, path)) from None
    finally:
        _config_path.reset(token)


def _describe(err: ValidationError, given: Mapping[str, Any], path: Path) -> str:
    env = {k.upper(): v for k, v in os.environ.items()}
    lines = []
    for e in err.errors(include_url=False):
        name = str(e["loc"][0]) if e["loc"] else ""
        why = e["msg"].removeprefix("Value error, ")
        var = f"{ENV_PREFIX}{name}".upper()
        if name in given:
            where = f"{FLAGS.get(name, '--' + name.replace('_', '-'))} {given[name]!r}"
        elif var in env and name not in COMMAND_LINE_ONLY:
            where = f"{var}={env[var]!r}"
        else:
            where = f"{name!r} in {path} ({e.get('input')!r})"
        lines.append(f"{where}: {why}")
    return "bad setting" + ("s" if len(lines) > 1 else "") + ":\n  " + "\n  ".join(lines)


class LaunchSettings(BaseSettings):
    """How a kernel was launched to be served: the environment of a kernel started from the
    Kaimon kernelspec (``KAIMON_AUTOSERVE=1``) or by an agent. Environment only."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    autoserve: bool = Field(False, description="serve the gate as soon as the kernel starts")
    started_by: Literal["person", "agent"] = "person"
    namespace: str | None = Field(None, description="the namespace of the session's tools")
    label: str | None = None
    session_key: str | None = Field(None, description="the session's key (kept over restarts)")

    @field_validator("namespace", "label", "session_key")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    @classmethod
    def variables(cls) -> list[str]:
        """The environment variables this reads."""
        return [f"{ENV_PREFIX}{name}".upper() for name in cls.model_fields]

    @classmethod
    def pop_from_env(cls) -> LaunchSettings:
        """Read the launch settings and remove them from ``os.environ``, so that processes
        the kernel starts do not inherit them. Raises :class:`SettingsError`."""
        try:
            return cls()
        except ValidationError as err:
            lines = []
            for e in err.errors(include_url=False):
                var = f"{ENV_PREFIX}{e['loc'][0] if e['loc'] else ''}".upper()
                given = os.environ.get(var)
                lines.append(f"{var}={given!r}: {e['msg'].removeprefix('Value error, ')}")
            raise SettingsError("bad kernel launch setting:\n  " + "\n  ".join(lines)) from None
        finally:
            for var in cls.variables():
                os.environ.pop(var, None)

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, for a kernel about to be launched."""
        env = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, bool):
                value = "1" if value else "0"
            env[f"{ENV_PREFIX}{name}".upper()] = str(value)
        return env
