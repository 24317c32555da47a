"""The turn-taking bench's caller clips: its own sentences (none shared with the latency
bench's prompts), spoken at bench time by several espeak-ng voices at 140-180 words a
minute, plus synthetic non-speech sounds. Every random choice (voice order, speed, pause
length, delay before an overlap) comes from one seeded generator, so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parley.audio.pcm import SAMPLE_RATE
from parley.testing import caller_speech, trim_silence

# Distinct espeak-ng voices and variants (accent, pitch, formant synthesis), none the
# agent's Piper voice. `espeak-ng --voices=en` lists more.
VOICES = [
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp+m3",
    "en-us+f3",
    "en-029",
    "en-us-nyc+klatt",
]
KINDS = ["complete", "pause", "backchannel", "noise", "interruption"]
SPEED_RANGE = (140, 180)  # words a minute, inclusive
PAUSE_RANGE_S = (0.5, 1.0)
OVERLAP_DELAY_RANGE_S = (0.3, 0.8)  # after loud agent audio arrives, before the clip

# a. Complete turns: what a caller of a support, booking or ordering line says.
COMPLETE = [
    "Can I change my delivery address to my work?",
    "What time does the pharmacy on Elm Street close tonight?",
    "I'd like to book a table for four on Friday evening.",
    "My internet has been down since this morning.",
    "How much is a return ticket to Manchester?",
    "Please cancel my appointment with Doctor Patel.",
    "Do you have any rooms free next weekend?",
    "I was charged twice for the same order.",
    "Could you send me a copy of my last invoice?",
    "Is the blue jacket still available in medium?",
    "I need to reset the password on my account.",
    "When will my refund show up on my card?",
]

# b. A pause where the sentence is clearly unfinished: (first half, rest).
PAUSED = [
    ("Could I get the", "vegetable curry and a mango lassi please."),
    ("I'd like to move my booking to", "the fourteenth of March."),
    ("The problem is that my", "washing machine keeps leaking water."),
    ("Can you tell me whether the", "museum is open on public holidays?"),
    ("I want to order two large pizzas with", "extra cheese and mushrooms."),
    ("My account number is", "four seven one nine two."),
    ("We are flying out of", "Dublin on the second of June."),
    ("Is it possible to", "pay for the repair in instalments?"),
    ("I ordered a sofa last month and", "it still hasn't arrived."),
    ("Could you check if my prescription for", "the allergy tablets is ready?"),
    ("I'd like a table for six at", "half past seven tonight."),
    ("The heating in our flat stopped working after", "the engineer came yesterday."),
]

# Questions that draw a long reply, asked before each backchannel, noise or interruption
# so that there is agent speech to talk over.
LONG_QUESTIONS = [
    "Can you explain how your returns process works, step by step?",
    "Tell me about the different broadband packages you offer.",
    "What should I do to prepare for my first visit to the clinic?",
    "How does the loyalty points scheme work?",
    "Can you describe the hotel's facilities for families?",
    "What are my options if my flight is cancelled?",
    "Explain how to set up the new router at home.",
    "What is included in the premium car insurance cover?",
    "Can you walk me through opening a savings account?",
    "How do I get to your office from the train station?",
    "What happens after I report a problem with my boiler?",
    "What are the rules for bringing pets on the ferry?",
    "How does the annual maintenance plan for the boiler work?",
]

# c. Short acknowledgements: (label, what espeak-ng is given). espeak-ng spells out "mm"
# as letters, so mm-hmm is given as phonemes.
BACKCHANNELS = [
    ("okay", "okay"),
    ("uh-huh", "uh-huh"),
    ("mm-hmm", "[[@m'h@m]]"),
    ("right", "right"),
    ("yeah", "yeah"),
    ("I see", "I see"),
    ("sure", "sure"),
    ("got it", "got it"),
]
NOISES = ["cough", "double cough", "knock", "hum", "babble"]

# d. Real interruptions.
INTERRUPTIONS = [
    "No, that's the wrong day.",
    "Stop, go back a second.",
    "Wait, I said two people.",
    "Actually, cancel that.",
    "Sorry, that's not what I asked.",
    "Hold on, can you repeat the price?",
    "No no, I meant the other address.",
    "Excuse me, I need to speak to a person.",
    "Hang on, which platform was that?",
    "That's wrong, my name is spelled differently.",
    "Just a moment, I need to find a pen.",
    "Can you slow down please?",
]


@dataclass
class Clip:
    """One trial: what the caller says (``pcm``, int16 16 kHz) and, for overlap kinds,
    the question asked first and how long to wait into the agent's reply."""

    kind: str
    text: str
    voice: str | None
    speed: int | None
    pcm: np.ndarray
    pause_s: float | None = None
    question: str | None = None
    question_pcm: np.ndarray | None = None
    delay_s: float | None = None

    def row(self) -> dict[str, object]:
        """The clip's description for the JSON results (no audio)."""
        return {
            "kind": self.kind,
            "text": self.text,
            "voice": self.voice,
            "speed": self.speed,
            "pause_s": None if self.pause_s is None else round(self.pause_s, 3),
            "question": self.question,
            "delay_s": None if self.delay_s is None else round(self.delay_s, 3),
            "clip_s": round(self.pcm.size / SAMPLE_RATE, 3),
        }


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype="<i2")


def to_pcm(x: np.ndarray, peak: float) -> np.ndarray:
    """Float audio scaled to ``peak`` (fraction of full scale), as int16."""
    top = float(np.abs(x).max()) or 1.0
    return (x / top * peak * 32767).astype("<i2")


def cough_burst(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A cough-like burst: low-passed noise with a fast attack and an exponential decay."""
    n = int(seconds * SAMPLE_RATE)
    noise = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")
    t = np.linspace(0.0, 1.0, n)
    return noise * np.minimum(1.0, t * 15) * np.exp(-4.0 * t)


def noise_clip(name: str, rng: np.random.Generator) -> np.ndarray:
    """A non-speech sound a phone line picks up while the agent talks."""
    if name == "cough":
        return to_pcm(cough_burst(rng, rng.uniform(0.2, 0.3)), 0.6)
    if name == "double cough":
        first, second = cough_burst(rng, 0.25), cough_burst(rng, 0.22)
        return to_pcm(np.concatenate([first, np.zeros(int(0.12 * SAMPLE_RATE)), second]), 0.6)
    if name == "knock":
        # Two knocks on a desk: a decaying 180 Hz thud with a click of noise at its onset.
        n = int(0.08 * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        thud = np.sin(2 * np.pi * 180 * t) * np.exp(-t / 0.015)
        thud[:40] += rng.standard_normal(40) * np.linspace(1.0, 0.0, 40)
        gap = np.zeros(int(0.18 * SAMPLE_RATE))
        return to_pcm(np.concatenate([thud, gap, thud]), 0.7)
    if name == "hum":
        # 1.2 s of mains-like hum (100 Hz and harmonics) at a low level.
        t = np.arange(int(1.2 * SAMPLE_RATE)) / SAMPLE_RATE
        hum = sum(np.sin(2 * np.pi * 100 * k * t) / k for k in (1, 2, 3))
        return to_pcm(np.asarray(hum) * np.minimum(1.0, t / 0.05), 0.05)
    if name == "babble":
        # Background chatter with no words in it: three voices reversed and mixed, low.
        voices = [
            caller_speech("Did you see the match last night", voice="en-gb", speed=170),
            caller_speech("She said she would call back later", voice="en-us+f2", speed=160),
            caller_speech("Put the boxes by the door please", voice="en-029", speed=150),
        ]
        n = min(v.size for v in voices)
        mix = sum(v[:n].astype(np.float64)[::-1] for v in voices)
        return to_pcm(np.asarray(mix), 0.08)
    raise ValueError(f"unknown noise {name!r}")


def _speak(text: str, voice: str, speed: int) -> np.ndarray:
    return trim_silence(caller_speech(text, speed=speed, voice=voice))


def build_clips(
    kinds: list[str], voices: list[str], seed: int, limit: int | None = None
) -> list[Clip]:
    """The trials of ``kinds``, in that order, at most ``limit`` of each. Each kind draws
    from its own generator (seeded by ``seed`` and the kind), so a run of one kind plays
    the same clips as a full run; voices rotate from a drawn start so that each kind
    hears every voice."""
    clips: list[Clip] = []
    for k, kind in enumerate(KINDS):
        if kind not in kinds:
            continue
        rng = np.random.default_rng([seed, k])
        offset = int(rng.integers(len(voices)))

        def pick(i: int, rng: np.random.Generator = rng, offset: int = offset) -> tuple[str, int]:
            speed = int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1))
            return voices[(i + offset) % len(voices)], speed

        def ask(clip: Clip, i: int, rng: np.random.Generator = rng, k: int = k) -> Clip:
            voice, speed = pick(i + 3)
            clip.question = LONG_QUESTIONS[(i + 5 * k) % len(LONG_QUESTIONS)]
            clip.question_pcm = _speak(clip.question, voice, speed)
            clip.delay_s = float(rng.uniform(*OVERLAP_DELAY_RANGE_S))
            return clip

        batch: list[Clip] = []
        if kind == "complete":
            for i, text in enumerate(COMPLETE[:limit]):
                voice, speed = pick(i)
                batch.append(Clip(kind, text, voice, speed, _speak(text, voice, speed)))
        elif kind == "pause":
            for i, (head, tail) in enumerate(PAUSED[:limit]):
                voice, speed = pick(i)
                pause = float(rng.uniform(*PAUSE_RANGE_S))
                # The first half ends in a comma: espeak-ng then gives it the level,
                # continuing intonation of a clause that goes on, not a final fall.
                pcm = np.concatenate(
                    [
                        _speak(head + ",", voice, speed),
                        silence(pause),
                        _speak(tail, voice, speed),
                    ]
                )
                batch.append(Clip(kind, f"{head} … {tail}", voice, speed, pcm, pause_s=pause))
        elif kind == "backchannel":
            for i, (label, spoken) in enumerate(BACKCHANNELS[:limit]):
                voice, speed = pick(i)
                batch.append(ask(Clip(kind, label, voice, speed, _speak(spoken, voice, speed)), i))
        elif kind == "noise":
            for i, name in enumerate(NOISES[:limit]):
                batch.append(ask(Clip(kind, name, None, None, noise_clip(name, rng)), i))
        elif kind == "interruption":
            for i, text in enumerate(INTERRUPTIONS[:limit]):
                voice, speed = pick(i)
                batch.append(ask(Clip(kind, text, voice, speed, _speak(text, voice, speed)), i))
        clips += batch
    return clips
