"""``parley serve``, ``parley worker``, ``parley control``, ``parley call``, ``parley
inspect``, ``parley drain`` and ``parley engine-server``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    """``parley`` and its commands."""
    parser = argparse.ArgumentParser(prog="parley", description="Parley voice agent server")
    sub = parser.add_subparsers(dest="command", required=True)

    servers = {
        "serve": "run the server on the configured engines",
        "worker": "serve as a worker of a fleet: as serve, announced in the worker registry "
        "(fleet.redis_url)",
        "control": "the control plane of a fleet: sessions, tokens, the page; each session "
        "is dispatched to a worker of the registry (fleet.redis_url)",
    }
    for name, help_text in servers.items():
        server = sub.add_parser(name, help=help_text)
        server.add_argument("--host")
        server.add_argument("--port", type=int)
        server.add_argument("--config", help="agent file (default ./parley.toml)")

    call = sub.add_parser("call", help="stream a WAV file to a server in real time")
    call.add_argument("wav", type=Path)
    call.add_argument("--url", default="ws://127.0.0.1:8000/v1/ws")
    call.add_argument("--out", type=Path, default=Path("agent.wav"), help="agent audio WAV")
    call.add_argument("--wait", type=float, default=15.0, help="max seconds to wait after the file")
    call.add_argument(
        "--talk-over-greeting",
        action="store_true",
        help="start speaking at once instead of after the agent's greeting",
    )
    call.add_argument(
        "--no-reconnect",
        action="store_true",
        help="end the call when the connection drops instead of following the session "
        "(through the control plane that created it) to a live server",
    )

    evaluate = sub.add_parser(
        "eval",
        help="play scripted callers (a scenario file) against a running server over the "
        "real socket, and score them: words heard, facts answered, tool calls, latency, "
        "turn-taking",
    )
    evaluate.add_argument("scenarios", type=Path)
    evaluate.add_argument("--url", default="ws://127.0.0.1:8000/v1/ws")
    evaluate.add_argument("--out", type=Path, default=Path("eval-report.json"))
    evaluate.add_argument(
        "--judge-url",
        help="an OpenAI-compatible base URL (…/v1) whose model also grades each answer; "
        "its key, if any, from PARLEY_EVAL_JUDGE_KEY",
    )
    evaluate.add_argument("--judge-model", default="default")

    replay = sub.add_parser(
        "replay",
        help="answer a stored session's caller turns again with another agent file "
        "(prompt, model, knowledge) and show both answers side by side",
    )
    replay.add_argument("session_id")
    replay.add_argument("--config", required=True, type=Path, help="the other agent file")
    replay.add_argument(
        "--database", help="where the session is stored (default: server.database_url)"
    )
    replay.add_argument("--out", type=Path, help="also write the rows as JSON here")

    inspect = sub.add_parser("inspect", help="print a session's turns as waterfalls")
    inspect.add_argument("session_id")
    inspect.add_argument("--url", default="http://127.0.0.1:8000")
    inspect.add_argument("--token", help="a supervisor or admin token")
    inspect.add_argument("--admin-key", help="default: PARLEY_TELEMETRY__ADMIN_KEY")

    drain = sub.add_parser(
        "drain",
        help="drain a running server (admin key): no new session, live ones until they end "
        "or the deadline; --wait returns once drained (a preStop hook)",
    )
    drain.add_argument("--url", default="http://127.0.0.1:8000")
    drain.add_argument("--admin-key", help="default: PARLEY_TELEMETRY__ADMIN_KEY")
    drain.add_argument("--deadline", type=float, help="default: server.drain_deadline_secs")
    drain.add_argument("--wait", action="store_true", help="until nothing is live")

    engines = sub.add_parser(
        "engine-server", help="serve the embedded engines over the OpenAI-compatible API"
    )
    engines.add_argument("--stages", default="llm,stt,tts", help="some of llm,stt,tts")
    engines.add_argument("--host", default="127.0.0.1")
    engines.add_argument("--port", type=int, default=9000)
    engines.add_argument(
        "--faults", action="store_true", help="fault injection for tests, driven at /_faults"
    )
    engines.add_argument("--config", help="agent file for the engines' settings")
    return parser


def one_blas_thread() -> None:
    """Make numpy's OpenBLAS run on the calling thread only, unless told otherwise.

    Called before numpy is imported (OpenBLAS reads it once, at load). OpenBLAS starts a
    thread per core and keeps it spinning for a while after every matrix product. Parley's
    products are small (the mel filterbank of each Smart Turn call) and run in inference
    lanes already sized to the cores: with 50 sessions on 2 cores that spinning was 14 %
    of a core of the worker and slowed every other thread (``make bench-load``)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> None:
    one_blas_thread()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("serve", "worker", "control"):
        _serve(args, role=args.command)
    elif args.command == "engine-server":
        _engine_server(parser, args)
    elif args.command == "eval":
        sys.exit(asyncio.run(_eval(args)))
    elif args.command == "replay":
        sys.exit(asyncio.run(_replay(args)))
    elif args.command == "inspect":
        from parley.inspect_report import fetch, format_inspection

        key = args.admin_key or os.environ.get("PARLEY_TELEMETRY__ADMIN_KEY")
        print(format_inspection(fetch(args.url, args.session_id, args.token, key)))
    elif args.command == "drain":
        from parley.drain_client import drain as drain_server

        key = args.admin_key or os.environ.get("PARLEY_TELEMETRY__ADMIN_KEY")
        if not key:
            sys.exit("parley drain: give --admin-key or set PARLEY_TELEMETRY__ADMIN_KEY")
        status = drain_server(args.url, key, deadline_secs=args.deadline, wait=args.wait)
        print(json.dumps(status), flush=True)
    else:
        sys.exit(asyncio.run(_call(args)))


async def _eval(args: argparse.Namespace) -> int:
    """0 when every scenario passed, 1 when one failed, 2 when the file is unusable."""
    from parley.evaluation import ScenarioError, load_scenarios, play_scenarios, summary
    from parley.evaluation.judge import Judge
    from parley.evaluation.report import totals

    try:
        scenarios = load_scenarios(args.scenarios)
    except ScenarioError as exc:
        print(f"parley eval: {exc}", file=sys.stderr)
        return 2
    judge = None
    if args.judge_url:
        key = os.environ.get("PARLEY_EVAL_JUDGE_KEY")
        judge = Judge(args.judge_url, args.judge_model, key)
    results = await play_scenarios(args.url, scenarios, judge=judge)
    report = {"scenarios_file": str(args.scenarios), "url": args.url, "results": results}
    report["totals"] = totals(results)
    args.out.write_text(json.dumps(report, indent=2))
    print(summary(results))
    print(f"report: {args.out}")
    return 0 if all(r["passed"] for r in results) else 1


async def _replay(args: argparse.Namespace) -> int:
    from parley.config import load_settings
    from parley.evaluation.replay import SessionNotFound, replay, side_by_side, stored_turns
    from parley.knowledge import KnowledgeFileError

    # The session is where the server keeps it (this environment's settings); the
    # answers come from the other agent file.
    database = args.database or load_settings().server.database_url
    if not args.config.is_file():
        print(f"parley replay: no agent file at {args.config}", file=sys.stderr)
        return 2
    try:
        turns = await stored_turns(database, args.session_id)
    except SessionNotFound as exc:
        print(f"parley replay: {exc}", file=sys.stderr)
        return 2
    os.environ["PARLEY_CONFIG"] = str(args.config)
    try:
        rows = await replay(turns, load_settings())
    except KnowledgeFileError as exc:
        print(f"parley replay: {exc}", file=sys.stderr)
        return 2
    print(side_by_side(rows))
    if args.out is not None:
        args.out.write_text(json.dumps({"session_id": args.session_id, "turns": rows}, indent=2))
    return 0


def _serve(args: argparse.Namespace, *, role: str = "serve") -> None:
    if args.config:
        os.environ["PARLEY_CONFIG"] = args.config
    from parley.config import load_settings
    from parley.server import create_app
    from parley.server.draining_server import serve
    from parley.server.fleet_worker import WorkerIdentity
    from parley.telemetry import configure_logging

    settings = load_settings()
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    if role != "serve" and settings.fleet.redis_url is None:
        sys.exit(
            f"parley {role}: set fleet.redis_url (PARLEY_FLEET__REDIS_URL), the Redis of "
            "the worker registry"
        )
    if role != "serve" and settings.server.token_secret is None:
        sys.exit(
            f"parley {role}: set server.token_secret (PARLEY_SERVER__TOKEN_SECRET), the "
            "same on the control plane and every worker: workers verify its tokens"
        )
    configure_logging(settings.log_level, settings.log_redact)
    identity = WorkerIdentity.for_server(settings, host, port) if role == "worker" else None
    app = create_app(settings, worker=identity, control=role == "control")
    if role == "control":
        print(f"Parley control plane: http://{host}:{port}/", flush=True)
    else:
        print(
            f"Parley: loading engines; then open http://{host}:{port}/ in a browser to talk "
            f"(WebSocket: ws://{host}:{port}/v1/ws)",
            flush=True,
        )
    # SIGTERM drains first (live calls go on until server.drain_deadline_secs).
    serve(app, host=host, port=port, ws_max_size=settings.server.ws_max_size, log_config=None)


def _engine_server(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.config:
        os.environ["PARLEY_CONFIG"] = args.config
    from parley.engine_server import parse_stages, run_engine_server

    try:
        stages = parse_stages(args.stages)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"Parley engine server: loading {', '.join(sorted(stages))}", flush=True)
    asyncio.run(run_engine_server(stages, args.host, args.port, faults=args.faults))


async def _call(args: argparse.Namespace) -> int:
    import wave

    from parley.audio import read_wav

    try:
        pcm = read_wav(args.wav)
    except (OSError, EOFError, ValueError, wave.Error) as exc:
        print(f"parley call: cannot read {args.wav} as a PCM WAV file: {exc}", file=sys.stderr)
        return 2
    import httpx

    from parley.client_reconnect import ReconnectFailed

    try:
        return await _stream_call(args, pcm)
    except ReconnectFailed as exc:
        print(f"parley call: the call dropped and could not be resumed: {exc}", file=sys.stderr)
        return 1
    except (OSError, httpx.HTTPError) as exc:
        print(f"parley call: cannot reach {args.url}: {exc!r}", file=sys.stderr)
        return 1


async def _stream_call(args: argparse.Namespace, pcm: Any) -> int:
    from parley.audio import write_wav
    from parley.client import CallClient

    async with CallClient(args.url, reconnect=not args.no_reconnect) as client:
        printer = asyncio.create_task(_print_events(client))
        if not args.talk_over_greeting:
            await _let_greeting_finish(client)
        loop = asyncio.get_running_loop()
        started = loop.time()
        last_speech_at = await client.say(pcm)
        replied = True
        try:
            # Every turn of the file is answered, then the agent falls quiet.
            ended_at, _ = await client.wait_for("turn.ended", after=started, timeout=args.wait)
            while True:
                spoke_at, _ = await client.wait_for(
                    "agent.state",
                    lambda e: e["state"] == "speaking",
                    after=ended_at,
                    timeout=args.wait,
                )
                await client.wait_for(
                    "agent.state", lambda e: e["state"] == "listening", after=spoke_at, timeout=120
                )
                more = [t for t, e in client.events if t > ended_at and e["type"] == "turn.ended"]
                if not more or more[-1] < spoke_at:
                    break
                ended_at = more[-1]
        except TimeoutError:
            replied = False
        await asyncio.sleep(0.2)
        printer.cancel()
        agent = client.audio_between(0)
        write_wav(args.out, agent)
        first = client.first_loud_audio_after(last_speech_at)
        if first is not None:
            print(f"voice-to-voice (client-measured): {(first - last_speech_at) * 1000:.0f} ms")
        print(f"agent audio: {agent.size / 16_000:.2f} s -> {args.out}")
        if not replied:
            print(f"parley call: no complete reply within {args.wait:.0f} s", file=sys.stderr)
            return 1
    return 0


async def _print_events(client: Any) -> None:
    shown = 0
    while True:
        await asyncio.sleep(0.05)
        for _, ev in client.events[shown:]:
            _print_event(ev)
        shown = len(client.events)


async def _let_greeting_finish(client: Any) -> None:
    """Wait, as a person would, until the agent's greeting (if any) has been spoken."""
    try:
        spoke_at, _ = await client.wait_for(
            "agent.state", lambda e: e["state"] == "speaking", timeout=3.0
        )
    except TimeoutError:
        return  # no greeting configured
    await client.wait_for(
        "agent.state", lambda e: e["state"] == "listening", after=spoke_at, timeout=60.0
    )


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
    elif kind == "client.reconnecting":
        print(f"[reconnecting] the connection dropped ({ev.get('close_code')})")
    elif kind == "client.reconnected":
        where = f"worker {ev['worker_id']}" if ev.get("worker_id") else "the server"
        print(f"[reconnected] to {where} after {ev.get('attempts')} attempt(s)")
