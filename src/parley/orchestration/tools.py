"""Tools the agent may call: declared with a JSON schema, as a Python function (decorator)
or an HTTP webhook. Every call receives an idempotency key, ``<turn id>:<call id>``, so a
downstream system can recognise a repeat even if Parley cannot."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jsonschema

from parley.config import WebhookToolSettings, config_file_path
from parley.telemetry import get_logger

log = get_logger(__name__)

ToolFunction = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]


class ToolArgumentsError(ValueError):
    """Arguments that do not fit the tool's schema."""


class WebhookFailed(RuntimeError):
    """A webhook tool's endpoint failed; the message is safe to show a client."""


def _webhook_problem(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"the tool's endpoint answered HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.TimeoutException):
        return "the tool's endpoint did not answer in time"
    if isinstance(exc, httpx.HTTPError):
        return "the tool's endpoint could not be reached"
    return "the tool's endpoint answered something other than JSON"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    run: ToolFunction
    side_effect: bool = True
    retry_safe: bool = False
    """A repeat with the same idempotency key has no second effect, so a call cut off by
    a crash may be re-sent on recovery (else its outcome is reported unknown)."""

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

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

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
        retry_safe: bool = False,
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
                    retry_safe=retry_safe,
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
        retry_safe: bool = False,
    ) -> Tool:
        """A tool that POSTs ``{"tool", "arguments"}`` to ``url`` with an Idempotency-Key
        header and returns the JSON object it answers."""

        async def call(arguments: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
            try:
                async with httpx.AsyncClient(timeout=timeout) as http:
                    response = await http.post(
                        url,
                        json={"tool": name, "arguments": arguments},
                        headers={"Idempotency-Key": idempotency_key},
                    )
                    response.raise_for_status()
                    body = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                # The URL (it may carry a key) and the endpoint's answer go to the log;
                # the recorded outcome, which clients see, says only what went wrong.
                log.warning("webhook tool failed", tool=name, error=repr(exc))
                raise WebhookFailed(_webhook_problem(exc)) from None
            return body if isinstance(body, dict) else {"result": body}

        return self.add(Tool(name, description, parameters, call, retry_safe=retry_safe))


def _module_from_file(name: str) -> ModuleType:
    """A tools module that is a file: relative to the agent file's folder (where an
    agent's files live together), else to the working directory."""
    path = Path(name)
    agent_file = config_file_path()
    if not path.is_absolute() and agent_file is not None:
        beside = agent_file.parent / path
        path = beside if beside.is_file() else path
    if not path.is_file():
        raise FileNotFoundError(f"agent.tools_module names {name}, which is not a file")
    spec = importlib.util.spec_from_file_location(f"parley_agent_tools.{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"agent.tools_module {name} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_registry(
    tools_module: str | None, webhooks: Sequence[WebhookToolSettings]
) -> ToolRegistry:
    """The agent's tools: the registry named by ``agent.tools_module`` (``pkg.mod:name``,
    or ``file.py:name`` beside the agent file) plus the ``[[tools]]`` webhooks of the
    agent file."""
    registry = ToolRegistry()
    if tools_module:
        module_name, _, attribute = tools_module.partition(":")
        module = (
            _module_from_file(module_name)
            if module_name.endswith(".py")
            else importlib.import_module(module_name)
        )
        found = getattr(module, attribute or "registry", None)
        if not isinstance(found, ToolRegistry):
            raise ValueError(f"agent.tools_module {tools_module!r} is not a ToolRegistry")
        # Copied, not extended: the module's registry is shared by every app built in
        # this process, and adding the webhooks to it twice would fail.
        for tool in found:
            registry.add(tool)
    for hook in webhooks:
        registry.webhook(
            hook.name,
            hook.url,
            dict(hook.parameters),
            description=hook.description,
            timeout=hook.timeout_secs,
            retry_safe=hook.retry_safe,
        )
    return registry
