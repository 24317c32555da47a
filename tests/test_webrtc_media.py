"""The WebRTC media path's own parts: the audio jitter buffer and the 48 kHz framing."""

from __future__ import annotations

import numpy as np
import pytest
from aiortc.rtp import RtpPacket

from parley.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE
from parley.transports.webrtc.jitter import AudioJitterBuffer
from parley.transports.webrtc.tracks import OPUS_FRAME_SAMPLES, OPUS_RATE, OpusRateFrames


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=seq * 960)
    p._data = bytes([seq % 256])  # type: ignore[attr-defined]
    return p


def released(buffer: AudioJitterBuffer, seqs: list[int]) -> list[int | None]:
    out: list[int | None] = []
    for seq in seqs:
        _, frame = buffer.add(packet(seq))
        out.append(None if frame is None else frame.timestamp // 960)
    return out


def test_in_order_packets_are_released_as_they_arrive() -> None:
    # aiortc's buffer would hold each one until the next (or the next four) arrived.
    assert released(AudioJitterBuffer(), [5, 6, 7, 8]) == [5, 6, 7, 8]


def test_sequence_numbers_wrap() -> None:
    assert released(AudioJitterBuffer(), [65534, 65535, 65536, 65537]) == [
        65534,
        65535,
        65536,
        65537,
    ]


def test_a_reordered_packet_is_waited_for_then_released_in_order() -> None:
    buffer = AudioJitterBuffer(lost_after=2)
    assert released(buffer, [1, 3, 2, 4]) == [1, None, 2, 3]
    assert released(buffer, [5]) == [4]  # one frame of backlog, then it drains on its own
    assert buffer.lost == 0


def test_a_lost_packet_is_skipped_after_lost_after_later_ones() -> None:
    buffer = AudioJitterBuffer(lost_after=2)
    assert released(buffer, [1, 3, 4]) == [1, None, 3]
    assert buffer.lost == 1
    assert released(buffer, [2]) == [None]  # too late: never handed to the decoder


def test_the_backlog_after_a_loss_stays_bounded() -> None:
    buffer = AudioJitterBuffer(lost_after=8, max_backlog=3)
    assert released(buffer, [1, *range(3, 11)]) == [1, *[None] * 7, 8]
    assert buffer.dropped == 5 and buffer.lost == 1
    assert released(buffer, [11, 12]) == [9, 10]


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        AudioJitterBuffer(lost_after=0)


def test_opus_rate_frames_are_whole_and_continuous() -> None:
    """Frames pushed one at a time come out as whole 960-sample frames of one continuous
    48 kHz stream: the same tone, no gaps, no clicks."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = (np.sin(2 * np.pi * 300 * t) * 8000).astype("<i2")
    frames = OpusRateFrames()
    out = []
    frames.push(tone[:FRAME_SAMPLES].tobytes())  # the playout runs ahead of the track
    for i in range(FRAME_SAMPLES, tone.size, FRAME_SAMPLES):
        frames.push(tone[i : i + FRAME_SAMPLES].tobytes())
        pcm = frames.pop()
        assert pcm is not None and len(pcm) == OPUS_FRAME_SAMPLES * 2
        out.append(np.frombuffer(pcm, dtype="<i2"))
    y = np.concatenate(out).astype(float)[OPUS_FRAME_SAMPLES:]
    steepest = 8000 * 2 * np.pi * 300 / OPUS_RATE
    assert np.abs(np.diff(y)).max() <= steepest * 1.05
    assert np.abs(y).max() > 7500
    assert frames.pop() is not None and frames.pop() is None  # the lookahead, then empty


def test_clearing_drops_what_is_buffered() -> None:
    frames = OpusRateFrames()
    for _ in range(5):
        frames.push(np.full(FRAME_SAMPLES, 5000, dtype="<i2").tobytes())
    assert frames.buffered_secs > 0.08
    frames.clear()
    assert frames.buffered_secs == 0 and frames.pop() is None
