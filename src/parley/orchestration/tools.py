"""Tools the agent may call: declared with a JSON schema, as a Python function (decorator)
or an HTTP webhook. Every call receives an idempotency key, ``<turn id>:<call id>``, so a
downstream system can recognise a repeat even if Parley cannot."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema

ToolFunction = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]


class ToolArgumentsError(ValueError):
    """Arguments that do not fit the tool's schema."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    run: ToolFunction
    side_effect: bool = True

    def validate(self, arguments: dict[str, Any]) -> None:
        try:
            jsonschema.validate(arguments, self.parameters)
        except jsonschema.ValidationError as exc:
            raise ToolArgumentsError(f"{self.name}: {exc.message}") from exc


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def add(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
        self._tools[tool.name] = tool
        return tool

    def tool(
        self,
        parameters: dict[str, Any],
        *,
        name: str | None = None,
        description: str = "",
        side_effect: bool = True,
    ) -> Callable[[ToolFunction], ToolFunction]:
        """Register ``async def fn(arguments, idempotency_key) -> dict`` as a tool."""

        def register(fn: ToolFunction) -> ToolFunction:
            self.add(
                Tool(
                    name=name or fn.__name__,
                    description=description or (fn.__doc__ or "").strip(),
                    parameters=parameters,
                    run=fn,
                    side_effect=side_effect,
                )
            )
            return fn

        return register

    def webhook(
        self,
        name: str,
        url: str,
        parameters: dict[str, Any],
        *,
        description: str = "",
        timeout: float = 10.0,
    ) -> Tool:
        """A tool that POSTs ``{"tool", "arguments"}`` to ``url`` with an Idempotency-Key
        header and returns the JSON object it answers."""

        async def call(arguments: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=timeout) as http:
                response = await http.post(
                    url,
                    json={"tool": name, "arguments": arguments},
                    headers={"Idempotency-Key": idempotency_key},
                )
                response.raise_for_status()
                body = response.json()
            return body if isinstance(body, dict) else {"result": body}

        return self.add(Tool(name, description, parameters, call))
