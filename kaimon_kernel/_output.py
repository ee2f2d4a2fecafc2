"""Bounded capture of what an execution shows: text head + tail, images, the error.

A 10 MB print must neither reach the agent whole nor grow the server's memory: the text
keeps at most ``limit`` characters (half head, half tail) and counts what it cut.

Outputs reduce as a notebook reduces them (nbclient): an ``update_display_data`` replaces
the display whose ``display_id`` it names instead of adding one, and ``clear_output`` drops
what was shown so far (with ``wait=True``, when the next output comes).

Scaling an image down (decode, resample, encode: up to seconds for a 12-megapixel figure)
would stall the server's event loop, and with it every session and client. A capture made
with ``background=True`` scales in a worker thread instead (Pillow releases the GIL), one
image at a time in arrival order, so each image's byte budget is what the ones before it
left, as if scaled inline; :meth:`OutputCapture.settled` waits for the images under way.
While waiting, a raw image is held only until it is scaled or superseded (a later update of
its display, a clear), and at most ``MAX_PENDING_B64`` of them at once: more is noted as not
kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_EDGE", "Image", "OutputCapture", "as_shown", "fit_image", "strip_ansi"]

#: A display with a display_id sits in the text as a token, rendered with its latest content.
_SLOT = re.compile("\ue000(\\d+)\ue001\n?")  # its own line: a later \r cannot erase it
_SLOT_CUT_END = re.compile("\ue000\\d*$")  # a token cut where the head ends
_SLOT_CUT_START = re.compile("^\\d*\ue001")  # ... or where the tail starts
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
#: Images larger than this (base64 characters) are not sent; a note says so instead.
#: The SDK's HTTP client rejects one streamed event over 1 MiB.
MAX_IMAGE_B64 = 700_000
MAX_IMAGES_B64_TOTAL = 750_000
#: Raw images (base64 characters) waiting to be scaled down at once, beyond the first.
MAX_PENDING_B64 = 100 * MAX_IMAGE_B64
IMAGE_TYPES = ("image/png", "image/jpeg")
#: The longest edge, in pixels, of an image sent to an agent (what Claude's vision
#: recommends: larger images are scaled down by the model anyway, at the agent's cost).
MAX_EDGE = 1568
_PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG"}

logger = logging.getLogger(__name__)


def fit_image(data: str, mime: str, max_edge: int = MAX_EDGE, max_b64: int | None = None) -> str:
    """``data`` (base64) scaled down so that its longest edge is at most ``max_edge`` pixels
    and, given ``max_b64``, its base64 at most that long; in the same format (PNG stays PNG).
    Unchanged when it already fits or cannot be read as an image."""
    fmt = _PIL_FORMATS.get(mime)
    if fmt is None or max_edge <= 0:
        return data
    from PIL import Image as PILImage  # a server-only cost

    try:
        with PILImage.open(io.BytesIO(base64.b64decode(data))) as im:
            edge = min(max(im.size), max_edge)
            if edge == max(im.size) and (max_b64 is None or len(data) <= max_b64):
                return data  # only the header was read
            im.load()
            for _ in range(6):  # a busy picture may need a smaller size to fit the bytes
                out = _encode(im, fmt, edge)
                if max_b64 is None or len(out) <= max_b64:
                    return out
                edge = int(edge * min(0.9, (max_b64 / len(out)) ** 0.5))
    except (OSError, ValueError, binascii.Error, PILImage.DecompressionBombError):
        return data
    return data


def _fit(b64: str, mime: str, max_edge: int, max_b64: int) -> str:
    return fit_image(b64.replace("\n", ""), mime, max_edge, max_b64)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # fed outside a loop: scale inline
        return None


def _encode(im: Any, fmt: str, edge: int) -> str:
    from PIL import Image as PILImage

    small = im.copy()
    small.thumbnail((edge, edge), PILImage.Resampling.LANCZOS)
    if fmt == "JPEG" and small.mode not in ("RGB", "L", "CMYK"):
        small = small.convert("RGB")
    buf = io.BytesIO()
    small.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return base64.b64encode(buf.getvalue()).decode()


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def as_shown(text: str) -> str:
    """Text as a terminal or notebook shows it: what a ``\\r`` went back over (a progress
    bar's earlier states) is gone. ``\\r\\n`` is a newline. Linear time, line by line."""
    if "\r" not in text:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if "\r" in line:
            ends_cr = line.endswith("\r")
            kept = (line[:-1] if ends_cr else line).rsplit("\r", 1)[-1]
            lines[i] = kept + "\r" if ends_cr else kept
    return "\n".join(lines)


@dataclass
class Image:
    mime: str
    data: str  # base64, as Jupyter sends it


class _HeadTail:
    """Text bounded to ``limit`` characters: the first half and the last half kept."""

    def __init__(self, limit: int) -> None:
        self.head_limit = max(limit // 2, 0)
        self.tail_limit = max(limit - self.head_limit, 0)
        self.head: list[str] = []
        self.head_len = 0
        self.tail: deque[str] = deque()
        self.tail_len = 0
        self.total = 0

    def add(self, text: str) -> None:
        if not text:
            return
        self.total += len(text)
        room = self.head_limit - self.head_len
        if room > 0:
            part = text[:room]
            self.head.append(part)
            self.head_len += len(part)
            text = text[room:]
        if not text or self.tail_limit == 0:
            return
        if len(text) >= self.tail_limit:
            self.tail.clear()
            text = text[-self.tail_limit :]
            self.tail_len = 0
        self.tail.append(text)
        self.tail_len += len(text)
        while self.tail_len > self.tail_limit:
            excess = self.tail_len - self.tail_limit
            first = self.tail[0]
            if len(first) <= excess:
                self.tail.popleft()
                self.tail_len -= len(first)
            else:
                self.tail[0] = first[excess:]
                self.tail_len -= excess

    @property
    def cut(self) -> int:
        return self.total - self.head_len - self.tail_len

    def text(self) -> str:
        if self.cut <= 0:
            return as_shown("".join(self.head) + "".join(self.tail))
        head = _SLOT_CUT_END.sub("", as_shown("".join(self.head)))
        tail = _SLOT_CUT_START.sub("", as_shown("".join(self.tail)))
        return (
            f"{head}\n… [{self.cut:,} of {self.total:,} characters cut; "
            f"showing the first {self.head_len:,} and the last {self.tail_len:,}] …\n{tail}"
        )


@dataclass(eq=False)
class _Scaling:
    """An image waiting to be scaled down (``data`` is dropped once it is no longer wanted)."""

    mime: str
    data: str | None
    display: _Display | None = None


@dataclass
class _Display:
    """A display with a display_id: shown once, with the latest content it was given."""

    display_id: str
    text: str = ""
    image: Image | None = None
    scaling: _Scaling | None = None


@dataclass
class OutputCapture:
    """Everything one execution shows, bounded. Also buffers what is new for streaming."""

    limit: int = 6000
    stream_limit: int = 8000
    #: Images are scaled down to this longest edge (pixels) as they come.
    max_edge: int = MAX_EDGE
    images: list[Image] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    #: Receives every piece of text as it comes (the block's file), unbounded here.
    sink: Callable[[str], None] | None = None
    #: Scale images in a worker thread (needs a running event loop); ``images`` and the
    #: notes are complete once :meth:`settled` returns.
    background: bool = False

    def __post_init__(self) -> None:
        self._text = _HeadTail(self.limit)
        self._new = _HeadTail(self.stream_limit)
        self._images_b64 = 0
        self._displays: list[_Display] = []
        self._by_id: dict[str, list[_Display]] = {}
        self._updated: dict[str, _Display] = {}  # updated since the last take_new
        self._clear_pending = False
        self._queue: deque[_Scaling] = deque()
        self._queued_b64 = 0
        self._worker: asyncio.Task[None] | None = None

    def add_message(self, msg_type: str, content: dict[str, object]) -> bool:
        """Take one iopub message's content; returns whether it was output (else ignored)."""
        transient = content.get("transient")
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        data = content.get("data")
        if msg_type == "stream":
            self.add_text(str(content.get("text", "")))
        elif msg_type in ("execute_result", "display_data") and isinstance(data, dict):
            self.add_bundle(data, display_id=display_id if isinstance(display_id, str) else None)
        elif msg_type == "update_display_data" and isinstance(data, dict):
            if isinstance(display_id, str):
                self.add_bundle(data, display_id=display_id, update=True)
        elif msg_type == "clear_output":
            self.clear(wait=bool(content.get("wait", False)))
        elif msg_type == "error":
            traceback = content.get("traceback")
            self.add_error(
                str(content.get("ename", "Error")),
                str(content.get("evalue", "")),
                [str(line) for line in traceback] if isinstance(traceback, list) else [],
            )
        else:
            return False
        return True

    def add_text(self, text: str) -> None:
        self._before_output()
        self._add_text(strip_ansi(text))

    def _add_text(self, text: str) -> None:
        self._text.add(text)
        self._new.add(text)
        if self.sink is not None:
            self.sink(text)

    def add_bundle(
        self, data: dict[str, object], *, display_id: str | None = None, update: bool = False
    ) -> None:
        """An execute_result or display_data bundle: an image if there is one, else text.

        With a ``display_id``, later bundles naming it replace it where it is shown
        (``update=True`` is an ``update_display_data``: it adds nothing new, as in a notebook,
        unless the display was never shown here, e.g. it was made by an earlier cell)."""
        if display_id is None:
            self._before_output()
            image = self._image_of(data)
            if isinstance(image, Image):
                self.images.append(image)
            elif isinstance(image, str):
                self.notes.append(image)
            elif image is None:
                text = self._text_of(data)
                if text:
                    self._add_text(text)
            return
        shown = self._by_id.get(display_id, [])
        if not update or not shown:
            self._before_output()
        for display in shown:  # a notebook updates every output showing this id
            self._set(display, data)
        if shown and update:
            self._updated[display_id] = shown[-1]
            if self.sink is not None and shown[-1].text:
                self.sink(shown[-1].text)
            return
        display = _Display(display_id)
        self._set(display, data)
        self._by_id.setdefault(display_id, []).append(display)
        self._displays.append(display)
        self._text.add(f"\ue000{len(self._displays) - 1}\ue001\n")
        if display.text:
            self._new.add(display.text)
            if self.sink is not None:
                self.sink(display.text)

    def _set(self, display: _Display, data: dict[str, object]) -> None:
        old = display.image
        if old is not None:
            self.images[:] = [i for i in self.images if i is not old]
            self._images_b64 -= len(old.data)
            display.image = None
        if display.scaling is not None:  # superseded before it was scaled
            self._drop(display.scaling)
            display.scaling = None
        image = self._image_of(data, display)
        if isinstance(image, Image):
            self.images.append(image)
            display.image, display.text = image, ""
        elif isinstance(image, _Scaling):
            display.scaling, display.text = image, ""
        else:  # its text, or the note saying its image was too large
            display.text = image + "\n" if image is not None else self._text_of(data)

    @staticmethod
    def _text_of(data: dict[str, object]) -> str:
        plain = data.get("text/plain")
        if not isinstance(plain, str):
            return ""
        plain = strip_ansi(plain)
        return plain if plain.endswith("\n") else plain + "\n"

    def _image_of(
        self, data: dict[str, object], display: _Display | None = None
    ) -> Image | str | _Scaling | None:
        """The bundle's image within the budget, a note when too large, None if it has none;
        in the background, the scaling under way (it lands in ``images`` or ``notes``)."""
        for mime in IMAGE_TYPES:
            b64 = data.get(mime)
            if not isinstance(b64, str):
                continue
            loop = _running_loop() if self.background else None
            if loop is None:
                return self._fitted(mime, _fit(b64, mime, self.max_edge, self._room()))
            if self._queue and self._queued_b64 + len(b64) > MAX_PENDING_B64:
                return (
                    f"[an {mime} image of {len(b64) * 3 // 4:,} bytes was not kept: images came "
                    "faster than they could be scaled down; save them to files]"
                )
            job = _Scaling(mime, b64, display)
            self._queue.append(job)
            self._queued_b64 += len(b64)
            if self._worker is None:
                self._worker = loop.create_task(self._scale_queued())
            return job
        return None

    def _room(self) -> int:
        return max(min(MAX_IMAGE_B64, MAX_IMAGES_B64_TOTAL - self._images_b64), 1)

    def _fitted(self, mime: str, b64: str) -> Image | str:
        size = len(b64)
        if size > MAX_IMAGE_B64 or self._images_b64 + size > MAX_IMAGES_B64_TOTAL:
            return (
                f"[an {mime} image of {size * 3 // 4:,} bytes was not sent: too large for "
                "one MCP message; save it to a file or shrink it]"
            )
        self._images_b64 += size
        return Image(mime, b64)

    async def _scale_queued(self) -> None:
        try:
            while self._queue:
                job = self._queue[0]
                try:
                    if job.data is not None:
                        b64 = await asyncio.to_thread(
                            _fit, job.data, job.mime, self.max_edge, self._room()
                        )
                        if job.data is not None:  # still wanted (no clear or update meanwhile)
                            self._drop(job)
                            self._land(job, self._fitted(job.mime, b64))
                except Exception:  # e.g. out of memory: this image is left out, not the rest
                    logger.exception("scaling an image down failed")
                    self._drop(job)
                self._queue.popleft()
        finally:
            self._worker = None

    def _land(self, job: _Scaling, image: Image | str) -> None:
        display = job.display
        if display is None:
            if isinstance(image, Image):
                self.images.append(image)
            else:
                self.notes.append(image)
            return
        display.scaling = None
        if isinstance(image, Image):
            self.images.append(image)
            display.image = image
            return
        display.text = image + "\n"
        self._updated[display.display_id] = display
        if self.sink is not None:
            self.sink(display.text)

    def _drop(self, job: _Scaling) -> None:
        if job.data is not None:
            self._queued_b64 -= len(job.data)
            job.data = None

    @property
    def scaling(self) -> int:
        """Images still being scaled down (in the background)."""
        return sum(job.data is not None for job in self._queue)

    async def settled(self) -> None:
        """Wait until every image added so far is scaled down and in ``images`` (or noted)."""
        while self._worker is not None:
            await asyncio.shield(self._worker)

    def abandon(self) -> None:
        """Give up the images still being scaled (the execution ended without them)."""
        left = self.scaling
        for job in self._queue:
            self._drop(job)
        if left:
            self.notes.append(
                f"[{left} image{'s' if left > 1 else ''} not shown: the execution ended while "
                "being scaled down]"
            )

    def clear(self, *, wait: bool = False) -> None:
        """``clear_output``: drop what was shown so far (``wait``: when the next output comes).

        The sink (the block's file) keeps everything."""
        if wait:
            self._clear_pending = True
            return
        self._clear_pending = False
        self._text = _HeadTail(self.limit)
        self._new = _HeadTail(self.stream_limit)
        self.images.clear()
        self.notes.clear()
        self._images_b64 = 0
        for job in self._queue:
            self._drop(job)
        self._displays.clear()
        self._by_id.clear()
        self._updated.clear()

    def _before_output(self) -> None:
        if self._clear_pending:
            self.clear()

    def add_error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        tb = strip_ansi("\n".join(traceback)) if traceback else f"{ename}: {evalue}"
        self.error = f"{ename}: {evalue}"
        self.add_text(tb if tb.endswith("\n") else tb + "\n")

    @property
    def total_chars(self) -> int:
        return self._text.total

    @property
    def cut(self) -> int:
        """Characters left out of :meth:`text` (they are in the block's file)."""
        return self._text.cut

    def _render(self, text: str) -> str:
        if not self._displays:
            return text
        return _SLOT.sub(lambda m: self._displays[int(m.group(1))].text, text)

    def text(self) -> str:
        body = self._render(self._text.text())
        if self.notes:
            body += "\n".join(self.notes) + "\n"
        return body

    def take_new(self) -> str:
        """The text added since the last call (bounded), for progress notifications; a
        display updated meanwhile shows its latest content once."""
        text = self._new.text() if self._new.total else ""
        if self._updated:
            text += "".join(d.text for d in self._updated.values())
            self._updated.clear()
        if self._new.total:
            self._new = _HeadTail(self.stream_limit)
        return text
