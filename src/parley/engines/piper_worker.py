"""Piper TTS worker process: ``python -m parley.engines.piper_worker --voice V.onnx``.

piper-tts (and the espeak-ng inside it) is GPL-3.0, so Parley never imports it in the
server process; this worker is the only module that does, and it is reached only over a
pipe through the TTS protocol (:class:`parley.engines.tts_piper.PiperTTS`).

Wire protocol:
  stdin:  one JSON object per line: {"text": str, "length_scale": float}
  stdout: for each request, frames of <u32 little-endian byte length><PCM16LE 16 kHz mono>,
          one frame per synthesized sentence, then a zero-length frame;
          a failed request sends <0xFFFFFFFF><u32 length><UTF-8 error message>.
  The worker writes one zero-length frame when it is ready.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys

import numpy as np
import soxr

OUT_RATE = 16_000
ERROR = 0xFFFFFFFF


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--voice", required=True)
    parser.add_argument("--cuda", action="store_true")
    args = parser.parse_args()

    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(args.voice, use_cuda=args.cuda)
    out = sys.stdout.buffer

    def frame(payload: bytes) -> None:
        out.write(struct.pack("<I", len(payload)))
        out.write(payload)

    frame(b"")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            config = SynthesisConfig(length_scale=float(req.get("length_scale", 1.0)))
            for chunk in voice.synthesize(str(req["text"]), syn_config=config):
                audio = chunk.audio_float_array.astype(np.float32)
                if chunk.sample_rate != OUT_RATE:
                    audio = soxr.resample(audio, chunk.sample_rate, OUT_RATE, quality="HQ")
                frame((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
                out.flush()
            frame(b"")
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}".encode()
            out.write(struct.pack("<II", ERROR, len(msg)) + msg)
        out.flush()


if __name__ == "__main__":
    main()
