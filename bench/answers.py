"""Answer benchmark: does the agent say the right thing? The shipped agent file's
knowledge (``parley.toml``: Juniper Bistro) against spoken questions with expected facts.

Each question of each set is spoken by espeak-ng (voices other than the agent's, a
different one for each question), transcribed by the shipped recognizer, and answered
the way a session answers a turn: the agent file's system prompt, the knowledge's
grounding (``parley.knowledge``) and the LLM streaming its reply. An answer is correct
when it states every fact the question expects (``parley.knowledge.answer_check``).

Two question sets: ``questions.yaml`` was written with the knowledge file (the
development set: the retrieval was built looking at it), ``questions-heldout.yaml`` by
someone who saw only the knowledge file, after the retrieval was done (the figure to
trust).

For each model (the embedded SmolLM2-135M; ``--model PATH`` adds a GGUF, ``--remote URL
--remote-model NAME`` an OpenAI-compatible server) and each way of answering:

- ``none``: the LLM alone, without the knowledge (what the agent did before);
- ``restate``: the relevant facts in the prompt, the LLM answers from them;
- ``quote``: the best-matching fact said as it is (words matching no fact: the LLM).

it reports correct answers and the time to the reply's first words (the LLM's first
token; 0 for a quote, which needs no LLM). The recognizer's word error rate on each set
is reported beside. Writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parley.config import load_settings
from parley.engine_settings import LLMSettings
from parley.evaluation.answering import answer_turn
from parley.evaluation.scoring import word_errors
from parley.knowledge import load_agent_knowledge
from parley.knowledge.answer_check import Question, load_questions, states_facts
from parley.testing import caller_speech, trim_silence
from voice_to_voice import RESULTS, ROOT, machine

SETS = {
    "development": ROOT / "agents" / "bistro" / "questions.yaml",
    "held-out": ROOT / "agents" / "bistro" / "questions-heldout.yaml",
}
# espeak-ng voices, none the agent's Piper voice (as bench/turn_taking_clips.py).
VOICES = ["en-us", "en-gb-scotland", "en-gb-x-rp+m3", "en-us+f3", "en-029"]
MODES = ["none", "restate", "quote"]


@dataclass
class Spoken:
    question: Question
    voice: str
    heard: str


async def hear(questions: list[Question], stt: Any) -> list[Spoken]:
    """Each question spoken and transcribed by the shipped recognizer."""
    heard = []
    for i, q in enumerate(questions):
        voice = VOICES[i % len(VOICES)]
        pcm = trim_silence(caller_speech(q.text, voice=voice))
        audio = pcm.astype(np.float32) / 32768.0
        heard.append(Spoken(q, voice, (await stt.transcribe(audio)).text))
    return heard


def typed(questions: list[Question]) -> list[Spoken]:
    """The questions as written: what the answer is worth when every word is heard."""
    return [Spoken(q, "typed", q.text) for q in questions]


def build_llms(args: argparse.Namespace) -> dict[str, Any]:
    from parley.engines.llm_llama import LlamaLLM
    from parley.engines.llm_openai import OpenAICompatibleLLM

    base = load_settings().llm
    llms: dict[str, Any] = {"SmolLM2-135M-Instruct Q4_1 (embedded)": LlamaLLM(base)}
    for path in args.model:
        llms[Path(path).name] = LlamaLLM(base.model_copy(update={"model_path": path}))
    if args.remote:
        remote = LLMSettings(
            provider="openai", base_url=args.remote, model=args.remote_model, max_tokens=60
        )
        llms[f"{args.remote_model} (remote)"] = OpenAICompatibleLLM(remote)
    return llms


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    knowledge = load_agent_knowledge(settings)
    if knowledge is None:
        sys.exit("the agent file names no knowledge file (agent.knowledge_file)")
    from parley.engines.stt_whisper import WhisperSTT

    stt = WhisperSTT(settings.stt)
    runs: dict[tuple[str, str], list[Spoken]] = {}
    recognizer = {}
    for name, path in SETS.items():
        questions = load_questions(path)
        runs[(name, "typed")] = typed(questions)
        items = runs[(name, "spoken")] = await hear(questions, stt)
        edits = sum(word_errors(s.question.text, s.heard)[0] for s in items)
        words = sum(word_errors(s.question.text, s.heard)[1] for s in items)
        recognizer[name] = {"questions": len(items), "wer": round(edits / words, 3)}
        print(f"{name}: {len(items)} questions, recognizer WER {edits / words:.1%}")
    stt.close()
    rows = []
    for model, llm in build_llms(args).items():
        for mode in args.modes.split(","):
            for (name, how), items in runs.items():
                answers = []
                for s in items:
                    said, first = await answer_turn(
                        llm,
                        settings,
                        knowledge.with_mode("quote" if mode == "quote" else "restate"),
                        [],
                        s.heard,
                        use_knowledge=mode != "none",
                    )
                    answers.append(
                        {
                            "question": s.question.text,
                            "voice": s.voice,
                            "heard": s.heard,
                            "answer": said,
                            "correct": states_facts(said, s.question),
                            "first_token_ms": None if first is None else round(first * 1000),
                        }
                    )
                correct = sum(a["correct"] for a in answers)
                firsts = [a["first_token_ms"] or 0 for a in answers]
                quoted = sum(a["first_token_ms"] is None for a in answers)
                row = {
                    "model": model,
                    "mode": mode,
                    "set": name,
                    "questions_were": how,
                    "correct": correct,
                    "questions": len(answers),
                    "percent": round(100 * correct / len(answers), 1),
                    "first_words_p50_ms": statistics.median(firsts),
                    "quoted": quoted,
                    "answers": answers,
                }
                rows.append(row)
                print(
                    f"{model:38s} {mode:8s} {name:12s} {how:6s} {correct:3d}/{len(answers)} "
                    f"({row['percent']:5.1f} %)  first words p50 {row['first_words_p50_ms']:6.0f}"
                    f" ms  quoted {quoted}",
                    flush=True,
                )
        if hasattr(llm, "close"):
            llm.close()
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine(),
        "agent_file": str(ROOT / "parley.toml"),
        "knowledge": str(knowledge.path.relative_to(ROOT)),
        "recognizer": recognizer,
        "results": rows,
    }


def main() -> None:
    # The shipped agent file, wherever the bench is run from.
    os.environ.setdefault("PARLEY_CONFIG", str(ROOT / "parley.toml"))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", action="append", default=[], help="another GGUF to compare")
    parser.add_argument("--remote", default=None, help="an OpenAI-compatible base URL")
    parser.add_argument("--remote-model", default="default")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    result = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"answers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
