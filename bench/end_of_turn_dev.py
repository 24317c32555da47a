"""End-of-turn development set: the signals the end-of-turn decision fuses, offline.

The turn-taking bench (``make bench-turns``) measures the decision end to end; this script
is where its thresholds are chosen, on sentences of its own (none shared with the bench's
clips, so the bench stays a held-out test). For every sentence it speaks two stretches of
caller audio in each of several espeak-ng voices:

* the unfinished head ("Could you tell me if the,"; espeak-ng reads the comma as a
  clause that goes on), whose right answer is "not finished";
* the whole sentence, whose right answer is "finished".

For each stretch it prints what Whisper heard, Smart Turn's P(complete) on the audio and
the text model's P(finished) on the transcript, then, under the rule of
``parley.voice.endpointing`` and the default settings, how often an unfinished head would
end the turn inside a pause, and after what silence a whole sentence does. ``--json``
keeps the rows.

    .venv/bin/python bench/end_of_turn_dev.py [--voices en-us,en-gb] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from typing import Any

import numpy as np

from parley.config import Settings
from parley.testing import caller_speech, trim_silence

# (unfinished head, rest): the head stops where the sentence clearly goes on.
DEV = [
    ("I'd like to speak to someone about", "my electricity bill."),
    ("Could you tell me if the", "shop opens on Sundays?"),
    ("My daughter has an appointment on", "Thursday at nine."),
    ("I need a taxi from the station to", "the city centre."),
    ("Can I pay for the tickets with", "a credit card?"),
    ("We booked a double room but", "we were given a single."),
    ("The parcel was supposed to arrive", "last Tuesday."),
    ("I want to add my husband to", "the insurance policy."),
    ("How long does it take to", "get a new passport?"),
    ("I'm calling because my", "card was declined."),
    ("Is there a direct train from", "Leeds to London?"),
    ("Could you put me through to", "the billing department?"),
    ("I think there is a mistake in", "my last statement."),
    ("We would like two tickets for the", "evening show."),
    ("Do you still sell the", "red winter coats?"),
    ("My phone number is", "oh seven seven double four."),
]
VOICES = ["en-us", "en-gb", "en-us+f2", "en-gb-x-rp", "en-au", "en-us+m7"]
SPEED = 165
PAUSES_S = [0.5, 0.75, 1.0]
PREROLL_S = 0.3  # vad.preroll_secs
CHECK_S = Settings().vad.stop_secs  # Smart Turn hears the turn as the VAD stopped


async def measure(voices: list[str]) -> list[dict[str, Any]]:
    from parley.engines.stt_whisper import WhisperSTT
    from parley.engines.turn_smart import SmartTurn
    from parley.engines.turn_text import TextTurnDetector

    settings = Settings()
    stt = WhisperSTT(settings.stt)
    audio_eou = SmartTurn()
    text_eou = TextTurnDetector(settings.turn)
    rows: list[dict[str, Any]] = []
    for (head, tail), voice in itertools.product(DEV, voices):
        for finished, text in ((False, head + ","), (True, f"{head} {tail}")):
            pcm = trim_silence(caller_speech(text, speed=SPEED, voice=voice))
            # What the server holds when it asks: the pre-roll before the speech, and
            # the silence until the VAD declared it (Smart Turn reads that silence).
            audio = np.concatenate(
                [np.zeros(int(PREROLL_S * 16_000)), pcm / 32768.0, np.zeros(int(CHECK_S * 16_000))]
            ).astype(np.float32)
            heard = (await stt.transcribe(audio)).text
            p_audio = await audio_eou.completion_probability(audio)
            start = time.perf_counter()
            p_text = await text_eou.completion_probability(heard)
            text_ms = (time.perf_counter() - start) * 1000
            rows.append(
                {
                    "finished": finished,
                    "voice": voice,
                    "text": text,
                    "heard": heard,
                    "p_audio": round(p_audio, 3),
                    "p_text": round(p_text, 3),
                    "text_ms": round(text_ms, 1),
                }
            )
            print(
                f"{'done' if finished else 'open'} {voice:12} audio {p_audio:5.2f} "
                f"text {p_text:5.2f} ({text_ms:4.0f} ms)  {heard!r}",
                flush=True,
            )
    for engine in (stt, audio_eou, text_eou):
        engine.close()
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    """When each stretch would end the turn under the shipped rule and settings."""
    from parley.voice.endpointing import EndOfTurnEvidence, finish_delay

    settings = Settings().turn
    ends = {False: [], True: []}
    for row in rows:
        evidence = EndOfTurnEvidence(row["heard"], row["p_audio"], row["p_text"])
        ends[row["finished"]].append(finish_delay(evidence, settings))
    unfinished, finished = np.array(ends[False]), np.array(ends[True])
    print("\nunfinished heads: the turn would end within a pause of")
    for pause in PAUSES_S:
        share = 100 * float(np.mean(unfinished < pause))
        print(f"  {pause:.2f} s: {share:5.1f} % of {unfinished.size}")
    print("whole sentences: the turn ends after a silence of")
    for delay in sorted(set(finished.tolist())):
        share = 100 * float(np.mean(finished == delay))
        print(f"  {delay:.2f} s: {share:5.1f} % of {finished.size}")
    ms = [r["text_ms"] for r in rows]
    print(f"text model: p50 {np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", default=",".join(VOICES))
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--rows", help="score rows from an earlier --json run (no models)")
    args = parser.parse_args()
    if args.rows:
        rows = json.loads(open(args.rows).read())
    else:
        rows = asyncio.run(measure(args.voices.split(",")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    report(rows)


if __name__ == "__main__":
    main()
