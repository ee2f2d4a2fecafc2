"""A running server follows kaimon.json: a change (the dashboard's Config, or an editor)
applies without a restart.

``promote_after`` and ``cancel_grace`` take effect for the next call; ``mirror`` (the live
view's default) applies to kernels agents start from then on. Allowed projects need nothing
here: they are read afresh at each start_session. Flags and ``KAIMON_*`` variables keep their
precedence over the file. One file watch (watchfiles), no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import watchfiles

from .._errors import KaimonError
from .._paths import config_file
from .._settings import Settings, load_settings
from ._core import Kaimon
from ._events import SessionCame

__all__ = ["ConfigFollower"]

logger = logging.getLogger(__name__)


class ConfigFollower:
    """Applies kaimon.json to ``kaimon``'s options whenever the file changes."""

    def __init__(self, kaimon: Kaimon, flags: Mapping[str, Any], settings: Settings) -> None:
        self.kaimon = kaimon
        self.flags = dict(flags)
        self.settings = settings
        self.path = config_file()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe = kaimon.bus.subscribe(self._session_came, SessionCame)

    async def run(self) -> None:
        """Watch until cancelled."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        name = self.path.name
        try:
            async for _changes in watchfiles.awatch(
                folder,
                watch_filter=lambda _change, path: Path(path).name == name,
                recursive=False,
                debounce=200,
            ):
                self.reload()
        finally:
            self._unsubscribe()

    def reload(self) -> None:
        """Read the settings again and apply those that may change while running."""
        try:
            settings = load_settings(self.flags)
        except KaimonError as err:
            logger.warning("kaimon.json changed but was not applied: %s", err)
            return
        options = self.kaimon.options
        before = (options.promote_after, options.cancel_grace, self.settings.mirror)
        options.promote_after = settings.promote_after
        options.cancel_grace = settings.cancel_grace
        self.settings = settings
        after = (options.promote_after, options.cancel_grace, settings.mirror)
        if after != before:
            logger.info(
                "settings from %s applied: promote_after=%g cancel_grace=%g mirror=%s",
                self.path,
                *after,
            )

    def _session_came(self, event: SessionCame) -> None:
        if self.settings.mirror:
            return
        session = self.kaimon.registry.sessions.get(event.session)
        if session is None or session.info.started_by != "agent" or not session.info.allow_mirror:
            return  # the person's own kernels keep the person's choice
        task = asyncio.get_running_loop().create_task(self._mirror_off(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mirror_off(self, session: Any) -> None:
        with contextlib.suppress(KaimonError):
            await session.set_mirror(False)
