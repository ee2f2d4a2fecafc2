"""Bounded capture of what an execution shows: text head + tail, images, the error.

A 10 MB print must neither reach the agent whole nor grow the server's memory: the text
keeps at most ``limit`` characters (half head, half tail) and counts what it cut.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Image", "OutputCapture", "as_shown", "strip_ansi"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
#: Images larger than this (base64 characters) are not sent; a note says so instead.
#: The SDK's HTTP client rejects one streamed event over 1 MiB.
MAX_IMAGE_B64 = 700_000
MAX_IMAGES_B64_TOTAL = 750_000
IMAGE_TYPES = ("image/png", "image/jpeg")


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
        head = as_shown("".join(self.head))
        tail = as_shown("".join(self.tail))
        return (
            f"{head}\n… [{self.cut:,} of {self.total:,} characters cut; "
            f"showing the first {self.head_len:,} and the last {self.tail_len:,}] …\n{tail}"
        )


@dataclass
class OutputCapture:
    """Everything one execution shows, bounded. Also buffers what is new for streaming."""

    limit: int = 6000
    stream_limit: int = 8000
    images: list[Image] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    #: Receives every piece of text as it comes (the block's file), unbounded here.
    sink: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self._text = _HeadTail(self.limit)
        self._new = _HeadTail(self.stream_limit)
        self._images_b64 = 0

    def add_text(self, text: str) -> None:
        text = strip_ansi(text)
        self._text.add(text)
        self._new.add(text)
        if self.sink is not None:
            self.sink(text)

    def add_bundle(self, data: dict[str, object]) -> None:
        """An execute_result or display_data bundle: an image if there is one, else text."""
        for mime in IMAGE_TYPES:
            b64 = data.get(mime)
            if isinstance(b64, str):
                self._add_image(mime, b64.replace("\n", ""))
                return
        plain = data.get("text/plain")
        if isinstance(plain, str):
            self.add_text(plain if plain.endswith("\n") else plain + "\n")

    def _add_image(self, mime: str, b64: str) -> None:
        size = len(b64)
        if size > MAX_IMAGE_B64 or self._images_b64 + size > MAX_IMAGES_B64_TOTAL:
            self.notes.append(
                f"[an {mime} image of {size * 3 // 4:,} bytes was not sent: too large for one "
                "MCP message; save it to a file or shrink it]"
            )
            return
        self._images_b64 += size
        self.images.append(Image(mime, b64))

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

    def text(self) -> str:
        body = self._text.text()
        if self.notes:
            body += "\n".join(self.notes) + "\n"
        return body

    def take_new(self) -> str:
        """The text added since the last call (bounded), for progress notifications."""
        if self._new.total == 0:
            return ""
        text = self._new.text()
        self._new = _HeadTail(self.stream_limit)
        return text
