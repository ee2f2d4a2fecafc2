"""Bounded capture of an execution's output."""

from __future__ import annotations

from kaimon_kernel._output import MAX_IMAGE_B64, OutputCapture, as_shown, strip_ansi


def test_short_output_is_kept_whole() -> None:
    cap = OutputCapture(limit=100)
    cap.add_text("hello\n")
    cap.add_bundle({"text/plain": "42"})
    assert cap.text() == "hello\n42\n"


def test_long_output_keeps_head_and_tail_and_says_how_much_was_cut() -> None:
    cap = OutputCapture(limit=100)
    for i in range(10_000):
        cap.add_text(f"line {i}\n")
    text = cap.text()
    assert text.startswith("line 0\n")
    assert text.endswith("line 9999\n")
    assert f"of {cap.total_chars:,} characters cut" in text
    assert len(text) < 250


def test_streamed_chunks_are_bounded_and_reset() -> None:
    cap = OutputCapture(limit=100, stream_limit=50)
    cap.add_text("a" * 1000)
    new = cap.take_new()
    assert "characters cut" in new and len(new) < 150
    assert cap.take_new() == ""


def test_ansi_codes_are_stripped() -> None:
    assert strip_ansi("\x1b[0;31mZeroDivisionError\x1b[0m") == "ZeroDivisionError"


def test_what_a_carriage_return_went_back_over_is_not_shown() -> None:
    cap = OutputCapture()
    for i in range(0, 101, 10):
        cap.add_text(f"\r{i:3d}%|{'#' * (i // 10):10}|")
    cap.add_text("\ndone\r\nnext line\n")
    assert cap.text() == "100%|##########|\ndone\r\nnext line\n"
    assert as_shown("a\rb\rc\nx\r\ny") == "c\nx\r\ny"
    # print(..., end="\r") leaves its last state showing
    assert as_shown("Downloading 50%\rDownloading 100%\r") == "Downloading 100%\r"
    assert as_shown("x" * 1_000_000) == "x" * 1_000_000  # no \r: returned as it is
    assert as_shown("a\r" + "x" * 200_000) == "x" * 200_000  # a long line is not quadratic


def test_images_are_kept_unless_too_large_for_one_message() -> None:
    cap = OutputCapture()
    cap.add_bundle({"image/png": "iVBOR\n", "text/plain": "<Figure>"})
    cap.add_bundle({"image/png": "A" * (MAX_IMAGE_B64 + 1)})
    assert [i.data for i in cap.images] == ["iVBOR"]
    assert "was not sent: too large" in cap.text()
