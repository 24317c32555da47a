"""``parley serve`` and ``parley call``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="parley", description="Parley voice agent server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server on the configured engines")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--config", help="agent file (default ./parley.toml)")

    call = sub.add_parser("call", help="stream a WAV file to a server in real time")
    call.add_argument("wav", type=Path)
    call.add_argument("--url", default="ws://127.0.0.1:8000/v1/ws")
    call.add_argument("--out", type=Path, default=Path("agent.wav"), help="agent audio WAV")
    call.add_argument("--wait", type=float, default=15.0, help="max seconds to wait after the file")

    args = parser.parse_args(argv)
    if args.command == "serve":
        _serve(args)
    else:
        sys.exit(asyncio.run(_call(args)))


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    if args.config:
        os.environ["PARLEY_CONFIG"] = args.config
    from parley.config import load_settings
    from parley.server import create_app
    from parley.telemetry import configure_logging

    settings = load_settings()
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    configure_logging(settings.log_level, settings.log_redact)
    app = create_app(settings)
    print(
        f"Parley: loading engines; then listening on http://{host}:{port}  (WebSocket ws://{host}:{port}/v1/ws)",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, ws_max_size=settings.server.ws_max_size, log_config=None)


async def _call(args: argparse.Namespace) -> int:
    import wave

    from parley.audio import read_wav

    try:
        pcm = read_wav(args.wav)
    except (OSError, EOFError, ValueError, wave.Error) as exc:
        print(f"parley call: cannot read {args.wav} as a PCM WAV file: {exc}", file=sys.stderr)
        return 2
    try:
        return await _stream_call(args, pcm)
    except OSError as exc:
        print(f"parley call: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1


async def _stream_call(args: argparse.Namespace, pcm: Any) -> int:
    from parley.audio import write_wav
    from parley.client import CallClient

    async with CallClient(args.url) as client:
        shown = 0
        sent = client.say(pcm)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + pcm.size / 16_000 + args.wait
        last_speech_at = await sent
        while loop.time() < deadline:
            await asyncio.sleep(0.1)
            for _, ev in client.events[shown:]:
                _print_event(ev)
            shown = len(client.events)
            states = [ev.get("state") for ev in client.of_type("agent.state")]
            if (
                client.of_type("turn.ended")
                and states
                and states[-1] == "listening"
                and "speaking" in states
            ):
                break
        agent = client.audio_between(0)
        write_wav(args.out, agent)
        first = client.first_loud_audio_after(last_speech_at)
        if first is not None:
            print(f"voice-to-voice (client-measured): {(first - last_speech_at) * 1000:.0f} ms")
        print(f"agent audio: {agent.size / 16_000:.2f} s -> {args.out}")
    return 0


def _print_event(ev: dict[str, object]) -> None:
    kind = ev.get("type")
    if kind in ("transcript.partial", "transcript.final"):
        print(f"[{kind}] {ev.get('text')}")
    elif kind == "turn.ended":
        print(f"[user] {ev.get('text')}")
    elif kind == "agent.text":
        print(f"[agent] {ev.get('text')}")
    elif kind == "turn.metrics":
        fields = {k: v for k, v in ev.items() if k.endswith("_ms")}
        print("[metrics] " + "  ".join(f"{k}={v}" for k, v in fields.items()))
    elif kind in ("error", "turn.interrupted"):
        print(f"[{kind}] {ev}")
