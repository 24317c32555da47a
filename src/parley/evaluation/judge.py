"""An optional LLM judge: any OpenAI-compatible chat completions endpoint asked, per
turn, whether the agent's answer was right for what the caller said. Its verdict is
reported beside the fact check, never in place of it: a judge model can be wrong too."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from parley.knowledge.answer_check import Question

SYSTEM = "You check the answers of a business's phone agent. Reply with one word: yes or no."


@dataclass(frozen=True)
class Judge:
    base_url: str
    """E.g. ``http://127.0.0.1:8080/v1``."""
    model: str
    api_key: str | None = field(default=None, repr=False)  # never in a traceback or log
    timeout: float = 30.0

    async def grade(self, said: str, answer: str, question: Question) -> dict[str, Any]:
        """``{"verdict": True/False, "error": None}``, or a None verdict and why."""
        facts = "; ".join(" or ".join(f'"{alt}"' for alt in fact) for fact in question.expect)
        prompt = f"The caller said: {said}\nThe agent answered: {answer or '(nothing)'}\n"
        if facts:
            prompt += f"A correct answer states: {facts}\n"
        prompt += "Is the agent's answer correct and relevant to what the caller said?"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": prompt},
            ],
            "temperature": 0,
            "max_tokens": 3,
        }
        url = self.base_url.rstrip("/") + "/chat/completions"
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                response = await http.post(url, json=body, headers=headers)
                response.raise_for_status()
                content = response.json()["choices"][0]["message"]["content"]
        except httpx.HTTPStatusError as exc:
            return {"verdict": None, "error": f"the judge answered HTTP {exc.response.status_code}"}
        except httpx.HTTPError as exc:
            return {
                "verdict": None,
                "error": f"the judge could not be reached ({type(exc).__name__})",
            }
        except (ValueError, KeyError, IndexError, TypeError):
            return {"verdict": None, "error": "the judge's answer was not a chat completion"}
        word = re.match(r"\W*([a-z]+)", str(content).lower())
        if word is None or word.group(1) not in ("yes", "no"):
            return {"verdict": None, "error": f"the judge said neither yes nor no: {content!r}"}
        return {"verdict": word.group(1) == "yes", "error": None}
