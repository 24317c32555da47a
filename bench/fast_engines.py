"""Fast remote engines for the load benchmark: Parley's own OpenAI-compatible engine app
(``parley.engine_server.create_engine_app``: the same HTTP routes, parsing and streaming
a real remote provider is reached through) in front of engines that take a fixed, short
time and almost no CPU, so that what ``make bench-load`` measures is Parley's worker,
not the models.

- STT answers after ``--stt-ms`` with one of the benchmark callers' sentences, as a
  recognizer would over one stretch of speech: which sentence is fixed by the stretch's
  first half second (so a partial, the early final and the final of one stretch agree),
  and a partial gets its first words (4 a second of audio: the whole sentence by the
  end of the stretch, as the callers speak under 3 words a second). Not a
  recognizer: the words only have to behave like real callers' transcripts, because the
  worker's end-of-turn work depends on them (the text model scores each new text, and
  decides whether the audio model is needed at all).
- The LLM streams a two-sentence answer: first token after ``--llm-ttft-ms``, then
  one word every ``--llm-token-ms``.
- TTS streams real speech (an espeak-ng clip, read once at start), as long as the
  text needs at ~14 characters a second: first chunk after ``--tts-ttfb-ms``, then
  chunks of 100 ms at ten times real time, as a fast GPU TTS would.

Run: ``python bench/fast_engines.py --port 9100`` (serves llm, stt and tts).
"""

from __future__ import annotations

import argparse
import asyncio
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np

from parley.audio.pcm import SAMPLE_RATE
from parley.engine_server import ServedEngines, create_engine_app
from parley.engines.base import ChatMessage, Transcript
from parley.testing import caller_speech, trim_silence
from v2v_prompts import UTTERANCES, WEBRTC_UTTERANCES

QUESTION_WORDS = ("What", "How", "Can", "Could", "When", "Which", "Where", "Is", "Do")

SENTENCES = [
    f"{text}?" if text.startswith(QUESTION_WORDS) else f"{text}."
    for text in UTTERANCES + WEBRTC_UTTERANCES
]
ANSWER = "We open at nine on Saturday. Anything else I can help with?"
CHARS_PER_SEC = 14.0
WORDS_PER_SEC = 4.0
CHUNK_SECS = 0.1
SPEED_UP = 10.0


@dataclass
class FastSTT:
    delay: float

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        await asyncio.sleep(self.delay)
        head = np.round(audio[: SAMPLE_RATE // 2] * 1000).astype(np.int32)
        words = SENTENCES[zlib.crc32(head.tobytes()) % len(SENTENCES)].split()
        heard = max(1, int(audio.size / SAMPLE_RATE * WORDS_PER_SEC))
        return Transcript(" ".join(words[:heard]), duration_ms=self.delay * 1000)

    @property
    def busy(self) -> bool:
        return False


@dataclass
class FastLLM:
    ttft: float
    per_token: float

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        await asyncio.sleep(self.ttft)
        for i, word in enumerate(ANSWER.split(" ")):
            if i:
                await asyncio.sleep(self.per_token)
            yield word if i == 0 else " " + word

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        return None


class FastTTS:
    def __init__(self, ttfb: float) -> None:
        self.ttfb = ttfb
        voice = trim_silence(caller_speech(ANSWER, voice="en-us+f3"))
        self.voice = np.asarray(voice, dtype=np.int16)

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        await asyncio.sleep(self.ttfb)
        total = int(len(text) / CHARS_PER_SEC * SAMPLE_RATE)
        chunk = int(CHUNK_SECS * SAMPLE_RATE)
        for start in range(0, total, chunk):
            if start:
                await asyncio.sleep(CHUNK_SECS / SPEED_UP)
            # The voice, looped: real speech levels and spectrum for the whole answer.
            idx = np.arange(start, min(start + chunk, total)) % self.voice.size
            yield self.voice[idx]


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--stt-ms", type=float, default=30.0)
    parser.add_argument("--llm-ttft-ms", type=float, default=60.0)
    parser.add_argument("--llm-token-ms", type=float, default=8.0)
    parser.add_argument("--tts-ttfb-ms", type=float, default=40.0)
    args = parser.parse_args()
    engines = ServedEngines(
        stt=FastSTT(args.stt_ms / 1000),
        llm=FastLLM(args.llm_ttft_ms / 1000, args.llm_token_ms / 1000),
        tts=FastTTS(args.tts_ttfb_ms / 1000),
    )
    app = create_engine_app(engines, "llm,stt,tts")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
