"""The `hearthbot` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import (
    BindingSpec,
    Config,
    binding_problem,
    default_config_path,
    load_config,
    masked_dict,
)
from bot.errors import (
    ConfigBinding,
    ConfigError,
    HearthbotError,
    ProviderError,
    VoiceError,
)
from bot.install import SERVICE_MARKER
from bot.logs import setup_logging

if TYPE_CHECKING:
    from adapters.base import Adapter
    from bot.service import Service
    from bot.store.bindings import Binding
    from bot.store.usage import UsageLine
    from bot.turn import TurnResult
    from bot.web.server import WebServer

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("hearthbot")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hearthbot",
        description="Your own AI assistant on your own machine, reachable from your chat apps.",
    )
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="config file (default: $HEARTHBOT_CONFIG, then "
                             "~/.config/hearthbot/config.json if present, else built-in defaults)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="where the database and logs live (default: $HEARTHBOT_HOME or "
                             "~/.local/share/hearthbot)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="start the service with the configured chat platforms")
    run.set_defaults(handler=_run)

    chat = commands.add_parser("chat", help="chat in this terminal")
    chat.set_defaults(handler=_chat)
    chat.add_argument("--as", dest="who", choices=("owner", "guest"), default="owner",
                      help="talk as the owner (admin persona, the default) or as a guest")
    chat.add_argument("--once", metavar="TEXT", help="send one message, print the reply, exit")
    chat.add_argument("--stats", action="store_true",
                      help="after each reply, print time to first token and decode speed")

    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate and print the effective config")
    check.set_defaults(handler=_config_check)
    check.add_argument("config_file", nargs="?", type=Path, metavar="FILE",
                       help="the file to check")

    bind = commands.add_parser("bind", help="give a persona to matching chats")
    bind.set_defaults(handler=_bind)
    bind.add_argument("--platform", required=True, help="telegram, discord, console, ...")
    bind.add_argument("--persona", required=True, help="a persona (agents.instances) name")
    bind.add_argument("--chat-kind", choices=("dm", "group"), help="only DMs or only groups")
    bind.add_argument("--peer", help="the sender's platform user id")
    bind.add_argument("--group", help="a group, guild or channel id")
    bind.add_argument("--account", help="which bot account, when several are configured")
    bind.add_argument("--note", default="", help="a reminder of why this binding exists")

    unbind = commands.add_parser("unbind", help="remove a binding by its id")
    unbind.set_defaults(handler=_unbind)
    unbind.add_argument("id", type=int)

    pair = commands.add_parser("pair", help="print a one-hour code that makes a DM the owner's")
    pair.set_defaults(handler=_pair)

    forget = commands.add_parser("forget", help="delete everything stored about one chat")
    forget.set_defaults(handler=_forget)
    forget.add_argument("--chat", required=True, metavar="ID",
                        help="the chat's id (a Telegram DM's is the user's id; the terminal "
                             "chat's is 'owner')")
    forget.add_argument("--platform", help="only this platform's chat (default: every platform)")

    audit = commands.add_parser("audit", help="show the tool calls made, allowed or refused")
    audit.set_defaults(handler=_audit)
    audit.add_argument("--since", type=_since, metavar="WHEN",
                       help="only calls since then: an ISO date or time (UTC), or an age "
                            "such as 30m, 12h, 7d")
    audit.add_argument("--persona", help="only this persona's calls")
    audit.add_argument("--limit", type=int, default=100, help="at most this many (newest)")

    usage = commands.add_parser("usage", help="show the tokens the models used and their "
                                              "cost, from the configured prices")
    usage.set_defaults(handler=_usage)
    usage.add_argument("--since", type=_since, metavar="WHEN",
                       help="only turns since then: an ISO date or time (UTC), or an age "
                            "such as 24h, 7d (default: all)")
    usage.add_argument("--by", choices=("model", "persona", "chat"), default="model",
                       help="one line per model (the default), persona or chat")
    usage.add_argument("--json", action="store_true", help="print the figures as JSON")

    transcribe = commands.add_parser("transcribe",
                                     help="print what a voice note or audio file says")
    transcribe.set_defaults(handler=_transcribe)
    transcribe.add_argument("file", type=Path)

    say = commands.add_parser("say", help="speak text into an OGG/Opus voice note")
    say.set_defaults(handler=_say)
    say.add_argument("text")
    say.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")

    web = commands.add_parser("web", help="print a one-time link that signs you in to the "
                                          "web chat and dashboard")
    web.set_defaults(handler=_web)

    token = commands.add_parser("token", help="bearer tokens for the OpenAI-compatible endpoint")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="create a token for one persona")
    create.set_defaults(handler=_token_create)
    create.add_argument("--persona", required=True, help="the persona its requests get")
    create.add_argument("--name", default="", help="what the token is for")
    token_list = token_commands.add_parser("list", help="list the tokens (never their secrets)")
    token_list.set_defaults(handler=_token_list)
    revoke = token_commands.add_parser("revoke", help="revoke a token by its id")
    revoke.set_defaults(handler=_token_revoke)
    revoke.add_argument("id", type=int)

    bindings = commands.add_parser("bindings", help="list the binding table")
    bindings.set_defaults(handler=_list_bindings)
    bindings.add_argument("--platform")

    status = commands.add_parser("status", help="ask the running service how it is doing")
    status.set_defaults(handler=_status)
    status.add_argument("--json", action="store_true", help="print the raw figures as JSON")

    model = commands.add_parser("model", help="list the models, or switch the running "
                                              "service to another")
    model.set_defaults(handler=_model_list)
    model_commands = model.add_subparsers(dest="model_command", metavar="ACTION")
    model_list = model_commands.add_parser("list", help="list the models (the default)")
    model_list.set_defaults(handler=_model_list)
    model_use = model_commands.add_parser("use", help="make NAME the active model, now")
    model_use.set_defaults(handler=_model_use)
    model_use.add_argument("name", help="an alias from the model registry, or provider/model")

    warm = commands.add_parser("warm", help="wait for the model backend and load the active "
                                            "model (what deploy/ensure-model-ready.sh does)")
    warm.set_defaults(handler=_warm)

    doctor = commands.add_parser("doctor", help="check the setup, one line per check")
    doctor.set_defaults(handler=_doctor)

    bench = commands.add_parser("bench", help="measure the active model's backend and "
                                              "hearthbot's own time per turn")
    bench.set_defaults(handler=_bench)
    bench.add_argument("--runs", type=int, default=3, help="requests and turns to time (3)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")

    service = commands.add_parser("service", help="run hearthbot as a user service "
                                                  "(systemd on Linux, launchd on macOS)")
    service_commands = service.add_subparsers(dest="service_command", required=True,
                                              metavar="ACTION")
    for action, handler, text in (
            ("install", _service_install, "write the unit for this installation and load it"),
            ("uninstall", _service_uninstall, "stop the service and remove its unit"),
            ("status", _service_status, "say whether the unit is installed and running")):
        sub = service_commands.add_parser(action, help=text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--unit-dir", type=Path, metavar="DIR",
                         help="where the unit goes (default: $HEARTHBOT_UNIT_DIR, else "
                              "~/.config/systemd/user or ~/Library/LaunchAgents)")
        sub.add_argument("--kind", choices=("systemd", "launchd"),
                         help="the service manager (default: this system's)")
        sub.add_argument("--no-load", action="store_true",
                         help="only write (or remove) the file; do not ask the service "
                              "manager to load, start or stop anything")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _load(args)
    except ConfigError as exc:
        if args.handler is _doctor:  # a broken config is one of the things it reports
            return asyncio.run(_doctor_report(None, exc, args))
        print(f"hearthbot: {exc.user_message}", file=sys.stderr)
        return EXIT_USAGE
    if args.handler is _config_check:  # nothing to open, nothing to log
        checked: int = _config_check(config)
        return checked
    # Only the long-running service logs to the terminal (or the journal); commands a person
    # types keep their output clean and log to the file.
    # Under a service manager the rotated file is the log; the manager's own file then keeps
    # only what escapes logging.
    serving = (args.command == "run" and bool(config.channels_enabled)
               and not os.environ.get(SERVICE_MARKER))
    setup_logging(config.gateway.log_level, config.secrets(), config.data_path() / "logs",
                  to_stderr=serving)
    try:
        status: int = asyncio.run(args.handler(config, args))
        return status
    except KeyboardInterrupt:
        return 130
    except HearthbotError as exc:
        log.error("%s", exc, exc_info=True)
        print(f"hearthbot: {exc.user_message}", file=sys.stderr)
        return EXIT_FAILED


def _config_path(args: argparse.Namespace) -> Path | None:
    path: Path | None = (getattr(args, "config_file", None) or args.config
                         or default_config_path())
    return path


def _load(args: argparse.Namespace) -> Config:
    config = load_config(_config_path(args))
    if args.data_dir is not None:
        config = _with_data_dir(config, args.data_dir)
    return config


def _with_data_dir(config: Config, data_dir: Path) -> Config:
    from dataclasses import replace

    return replace(config, data_dir=str(data_dir))


def _config_check(config: Config) -> int:
    print(json.dumps(masked_dict(config), indent=2))
    print("config is valid", file=sys.stderr)
    return EXIT_OK


async def _chat(config: Config, args: argparse.Namespace) -> int:
    return await _terminal_chat(config, args.who, args.once, args.stats)


async def _announce(server: WebServer) -> None:
    """Say where the web pages are, once they are."""
    await server.ready.wait()
    print(f"Web chat and dashboard: {server.url} (sign in with the link `hearthbot web` "
          "prints)", file=sys.stderr, flush=True)


async def _terminal_chat(config: Config, who: str, once: str | None, stats: bool = False,
                         web: bool = False) -> int:
    from bot.service import open_service

    # The web chat beside the terminal takes voice notes, so speech is loaded for it.
    async with open_service(config, voice=web) as service:
        if web:
            from bot.web.server import WebServer

            server = WebServer(service)
            serving = asyncio.create_task(server.serve())
            ready = asyncio.create_task(server.ready.wait())
            await asyncio.wait([serving, ready], return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if serving.done():
                serving.result()  # raises the one sentence that says why it cannot listen
            await _announce(server)
            try:
                return await _console(service, config, who, once, stats)
            finally:
                await server.stop()
                await serving
        return await _console(service, config, who, once, stats)


async def _console(service: Service, config: Config, who: str, once: str | None,
                   stats: bool) -> int:
    from adapters.console import ConsoleChat

    if once is not None:
        # One-shot questions stand alone: each starts from an empty conversation.
        console = ConsoleChat(service.gateway, sender=who, chat_id=f"{who}-once")
        await service.gateway.start_over(console.event(""))
        result = await console.ask(once)
        if stats:
            _print_stats(result)
        return EXIT_OK if result.answered else EXIT_FAILED
    console = ConsoleChat(service.gateway, sender=who)
    resolution = await service.gateway.resolve(console.event(""))
    persona = service.gateway.personas[resolution.persona]
    print(f"hearthbot: chatting as {who} with the {persona.name} persona on "
          f"{service.models.target(persona.model).label}.", file=sys.stderr)
    print("Loading the model...", file=sys.stderr, flush=True)
    try:
        seconds = await service.models.warm(persona.model)
    except Exception as exc:  # the reply path reports it again, plainly, per message
        log.warning("warm-up failed: %s", exc)
    else:
        print(f"Ready in {seconds:.1f} s. /new starts over, Ctrl-D quits.", file=sys.stderr)
    await console.repl(on_result=_print_stats if stats else None)
    return EXIT_OK


async def _run(config: Config, args: argparse.Namespace) -> int:
    from bot.web.server import check_exposure

    check_exposure(config)  # an exposed port stops the start, before anything is loaded
    web = config.gateway.web.enabled
    if not config.channels_enabled:
        if sys.stdin.isatty():
            print("No chat platforms are configured; opening the terminal chat instead.",
                  file=sys.stderr)
            return await _terminal_chat(config, "owner", None, web=web)
        if not web:
            print("No chat platforms are configured (see the channels section of the config) "
                  "and the web pages are off; nothing to run.", file=sys.stderr)
            return EXIT_USAGE
    from adapters import build_adapters
    from bot.service import open_service, serve_platforms

    async with open_service(config, migrate_apart=True) as service:
        try:
            seconds = await service.models.start()
        except ProviderError as exc:
            # Keep serving: the backend may come up later (the service keeps checking), and
            # each reply says so until then.
            log.warning("the model is not ready: %s", exc)
            print(f"hearthbot: the model is not ready: {exc}. Serving anyway; it is loaded "
                  "as soon as it can be.", file=sys.stderr)
        else:
            log.info("cold start: %s loaded and warm in %.2f s", service.models.state.active,
                     seconds)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        adapters: list[Adapter] = list(build_adapters(config, service.gateway))
        if web:
            from bot.web.server import WebServer

            server = WebServer(service, lambda: {a.platform: a.ready.is_set()
                                                 for a in adapters if a is not server},
                               required=not config.channels_enabled)
            adapters.append(server)
            announcing = asyncio.create_task(_announce(server))
        log.info("serving %s", ", ".join(a.platform for a in adapters))
        failure = await serve_platforms(service, adapters, stopping)
        if web:
            announcing.cancel()
        if failure is not None:
            print(f"hearthbot: {failure.user_message}", file=sys.stderr)
            return EXIT_FAILED
        log.info("stopped")
    return EXIT_OK


async def _ask_service(config: Config, body: dict[str, object],
                       within: float = 30.0) -> dict[str, object] | None:
    from bot import control

    try:
        return await control.request(control.socket_path(config.data_path()), body, within)
    except control.ServiceNotRunning:
        return None


async def _status(config: Config, args: argparse.Namespace) -> int:
    answer = await _ask_service(config, {"op": "status"})
    if answer is None:
        print(f"hearthbot is not running (nothing answers for {config.data_path()}); "
              f"the configured model is {config.agents.default.active_model}.")
        return EXIT_FAILED
    if args.json:
        print(json.dumps(answer, indent=2))
        return EXIT_OK
    for line in status_lines(answer):
        print(line)
    return EXIT_OK


def status_lines(status: dict[str, Any]) -> list[str]:
    """The running service's figures, one line per subject."""
    def seconds(value: object) -> str:
        return f"{value:.2f} s" if isinstance(value, int | float) else "-"

    resident = "resident" if status.get("resident") == status.get("active") else \
        f"not resident ({status.get('state')})"
    if status.get("waiting_for_replies"):
        resident += f", waiting for {status['waiting_for_replies']} replies to finish"
    lines = [f"service      running, pid {status.get('pid')}, since {status.get('started_at')}",
             f"model        {status.get('active')}: {resident}",
             f"cold start   {seconds(status.get('cold_start_seconds'))} "
             f"(loaded at {status.get('loaded_at') or '-'}; {status.get('switches')} switches, "
             f"{status.get('rewarms')} re-warms after eviction)"]
    if status.get("last_error"):
        lines.append(f"last error   {status['last_error']}")
    last = status.get("last_turn")
    if isinstance(last, dict):
        speed = last.get("tokens_per_second")
        lines.append(f"last turn    {last.get('model')} at {last.get('at')}: first token "
                     f"{seconds(last.get('first_token_seconds'))}, "
                     f"{last.get('completion_tokens')} tokens in "
                     f"{seconds(last.get('total_seconds'))}"
                     + (f", {speed:.1f} tokens/s" if isinstance(speed, int | float) else ""))
    else:
        lines.append("last turn    none yet")
    memory = status.get("memory") or {}
    rss, free, need = memory.get("rss_bytes"), memory.get("available_bytes"), \
        memory.get("model_needs_gb")
    lines.append("memory       " + ", ".join(part for part in (
        f"this process {rss / 1e6:.0f} MB" if isinstance(rss, int) else "",
        f"{free / 1e9:.2f} GB available" if isinstance(free, int) else "",
        f"model estimate {need:.2f} GB" if isinstance(need, int | float) else "") if part))
    adapters = status.get("adapters") or []
    lines.append("adapters     " + (", ".join(
        f"{a['platform']} {'connected' if a['connected'] else 'not connected'}"
        for a in adapters) or "none"))
    lines.append(f"inbox        {status.get('inbox_depth')} waiting")
    for down in status.get("down") or []:
        count = down.get("requests") or 0
        instead = (f"answered by {down['answered_by']} instead ({count} "
                   f"request{'' if count == 1 else 's'})"
                   if down.get("answered_by") else "no fallback has answered yet")
        lines.append(f"fallback     {down['model']} is down since {down['since']}: {instead}; "
                     f"last error: {down['error']}")
    for server in status.get("managed") or []:
        lines.append(f"managed      {server['provider']}: {server['state']}, pid "
                     f"{server['pid']}, {server['restarts']} restarts, "
                     f"start {seconds(server['started_seconds'])}")
    return lines


async def _model_list(config: Config, args: argparse.Namespace) -> int:
    from bot.commands import model_list
    from bot.model_host import ModelHost

    answer = await _ask_service(config, {"op": "use"})
    if answer is not None:
        print(answer.get("text") or answer.get("error"))
        return EXIT_OK
    host = ModelHost(config)
    print(model_list(host).replace("Switch with /model NAME.",
                                   "(The service is not running; this is the configured "
                                   "active model.)"))
    return EXIT_OK


async def _model_use(config: Config, args: argparse.Namespace) -> int:
    answer = await _ask_service(config, {"op": "use", "model": args.name}, within=900.0)
    if answer is None:
        print("hearthbot: the service is not running; start it, or set "
              "agents.default.active_model in the config", file=sys.stderr)
        return EXIT_FAILED
    text = str(answer.get("text") or answer.get("error") or "")
    print(text, file=sys.stdout if answer.get("ok") else sys.stderr)
    return EXIT_OK if answer.get("ok") else EXIT_FAILED


async def _warm(config: Config, args: argparse.Namespace) -> int:
    """Wait (bounded) for the backend and load the active model. With the service running,
    it is the service's model that is (re-)warmed; otherwise the backend is asked directly."""
    from bot.model_host import ModelHost

    answer = await _ask_service(config, {"op": "warm"}, within=900.0)
    if answer is not None:
        print(answer.get("text") or answer.get("error"),
              file=sys.stdout if answer.get("ok") else sys.stderr)
        return EXIT_OK if answer.get("ok") else EXIT_FAILED
    host = ModelHost(config)
    _, spec, _ = config.resolve_model(None)
    if spec.type == "embedded" or spec.managed is not None:
        # The weights live in the service's own process (or the server it starts): loading
        # them here would only be thrown away. What can be checked is that they would load.
        try:
            need = await host.memory_need(host.label(None))
            await host.check_memory(host.label(None), None)
        except ProviderError as exc:
            print(f"hearthbot: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            await host.close()
        size = f" (about {need.peak_gb:.2f} GB at its peak)" if need else ""
        print(f"{host.label(None)} is loaded by the service itself when it starts{size}; "
              "nothing to warm beforehand.")
        return EXIT_OK
    try:
        seconds = await host.start()
    except ProviderError as exc:
        log.warning("warm-up failed: %s", exc)
        print(f"hearthbot: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await host.close()
    print(f"{host.label(None)} is loaded and warm ({seconds:.2f} s).")
    return EXIT_OK


async def _bench(config: Config, args: argparse.Namespace) -> int:
    from bot.bench import run_bench

    return await run_bench(config, max(1, args.runs), args.json)


async def _doctor(config: Config, args: argparse.Namespace) -> int:
    return await _doctor_report(config, None, args)


async def _doctor_report(config: Config | None, error: ConfigError | None,
                         args: argparse.Namespace) -> int:
    from bot.config import default_data_dir
    from bot.doctor import run_checks

    data_dir = config.data_path() if config else (args.data_dir or default_data_dir())
    checks = await run_checks(config, error, _config_path(args), data_dir)
    for check in checks:
        for line in check.lines():
            print(line)
    failed = sum(c.level == "fail" for c in checks)
    warned = sum(c.level == "warn" for c in checks)
    print(f"{failed} failed, {warned} warnings, {len(checks) - failed - warned} ok")
    return EXIT_FAILED if failed else EXIT_OK


async def _service_install(config: Config, args: argparse.Namespace) -> int:
    from bot import install

    plan = install.plan(config, _config_path(args), args.kind, args.unit_dir)
    install.write(plan)
    print(f"wrote {plan.unit_path}")
    print(f"  runs: {' '.join(plan.arguments)}")
    print(f"  logs: {plan.log_file} and {config.data_path() / 'logs' / 'hearthbot.log'}")
    verdict = install.verify(plan)
    label = {True: "verified", False: "PROBLEM", None: "not verified"}[verdict.ok]
    print(f"  {label}: {verdict.text}")
    if verdict.ok is False:
        return EXIT_FAILED
    if args.no_load:
        print("  not loaded (--no-load); to load it: "
              + "; ".join(" ".join(c) for c in install.load_commands(plan)))
        return EXIT_OK
    loaded, problem = install.run_all(install.load_commands(plan))
    if not loaded:
        print(f"hearthbot: the unit is written but not loaded: {problem}", file=sys.stderr)
        return EXIT_FAILED
    print("  loaded and started; it starts at login and restarts when it crashes")
    return EXIT_OK


async def _service_uninstall(config: Config, args: argparse.Namespace) -> int:
    from bot import install

    plan = install.plan(config, _config_path(args), args.kind, args.unit_dir)
    if not args.no_load:
        stopped, problem = install.run_all(install.unload_commands(plan))
        if not stopped:
            log.warning("stopping the service: %s", problem)
            print(f"  could not stop it: {problem}", file=sys.stderr)
    if not plan.unit_path.exists():
        print(f"nothing installed at {plan.unit_path}")
        return EXIT_OK
    plan.unit_path.unlink()
    if not args.no_load and plan.kind == "systemd":
        install.run_all([["systemctl", "--user", "daemon-reload"]])
    print(f"removed {plan.unit_path}")
    return EXIT_OK


async def _service_status(config: Config, args: argparse.Namespace) -> int:
    from bot import install

    plan = install.plan(config, _config_path(args), args.kind, args.unit_dir)
    if not plan.unit_path.exists():
        print(f"not installed (no {plan.unit_path}); `hearthbot service install` writes it")
        return EXIT_FAILED
    current = plan.unit_path.read_text(encoding="utf-8") == install.render(plan)
    print(f"installed at {plan.unit_path}"
          + ("" if current else " (written for other paths or options; `hearthbot service "
                               "install` rewrites it)"))
    if not args.no_load:
        print(f"service manager: {install.manager_state(plan)}")
    answer = await _ask_service(config, {"op": "ping"}, within=5.0)
    print("the service answers on its control socket" if answer else
          "the service does not answer on its control socket")
    return EXIT_OK if current else EXIT_FAILED


def _print_stats(result: TurnResult) -> None:
    if result.first_token_seconds is None:
        return
    speed = result.tokens_per_second
    print(f"[first token {result.first_token_seconds:.3f} s, {result.completion_tokens} tokens "
          f"in {result.total_seconds or 0:.3f} s"
          + (f", {speed:.1f} tokens/s]" if speed else "]"), file=sys.stderr)


async def _bind(config: Config, args: argparse.Namespace) -> int:
    from bot.service import open_store
    from bot.store.bindings import add_binding

    spec = BindingSpec(persona=args.persona, platform=args.platform, chat_kind=args.chat_kind,
                       peer=args.peer, group=args.group, account=args.account, note=args.note)
    refused = binding_problem(config, spec)
    if refused is not None:
        print(f"hearthbot: {refused}", file=sys.stderr)
        return EXIT_USAGE
    async with open_store(config) as store:
        binding = await add_binding(store, spec)
    print(f"binding {binding.id}: {_binding_line(binding)}")
    return EXIT_OK


async def _pair(config: Config, args: argparse.Namespace) -> int:
    from bot.pairing import CODE_LIFETIME, create_code, display
    from bot.service import open_store

    async with open_store(config) as store:
        code = await create_code(store)
    minutes = int(CODE_LIFETIME.total_seconds() // 60)
    print(f"Pairing code: {display(code)} (valid for {minutes} minutes)")
    print(f"Send  /pair {code}  to the bot in a direct message to make that chat yours.")
    if config.gateway.web.enabled:
        await _print_sign_in_link(config)
    return EXIT_OK


async def _web(config: Config, args: argparse.Namespace) -> int:
    if not config.gateway.web.enabled:
        print("hearthbot: the web pages are off (gateway.web.enabled)", file=sys.stderr)
        return EXIT_USAGE
    await _print_sign_in_link(config)
    return EXIT_OK


async def _print_sign_in_link(config: Config) -> None:
    from bot.service import open_store
    from bot.web.server import sign_in_link

    async with open_store(config) as store:
        link = await sign_in_link(config, store)
    minutes = config.gateway.web.link_minutes
    print(f"Sign in to the web chat and dashboard (the link works once, for {minutes:g} "
          f"minutes, while `hearthbot run` is running):\n  {link}")


async def _token_create(config: Config, args: argparse.Namespace) -> int:
    persona: str = args.persona
    from bot.service import open_store
    from bot.store.web import create_api_token

    if persona not in config.agents.instances:
        print(f"hearthbot: unknown persona {persona!r} (expected one of: "
              f"{', '.join(sorted(config.agents.instances))})", file=sys.stderr)
        return EXIT_USAGE
    async with open_store(config) as store:
        token, secret = await create_api_token(store, persona, args.name)
    print(f"token {token.id} for the {persona} persona; it is shown only this once:")
    print(secret)
    return EXIT_OK


async def _token_list(config: Config, args: argparse.Namespace) -> int:
    from bot.service import open_store
    from bot.store.web import list_api_tokens

    async with open_store(config) as store:
        tokens = await list_api_tokens(store)
    if not tokens:
        print("no API tokens")
    for token in tokens:
        used = token.last_used_at.strftime("%Y-%m-%d %H:%M") if token.last_used_at else "never"
        state = (f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at
                 else "active")
        name = f"  ({token.name})" if token.name else ""
        print(f"{token.id:>4}  {token.persona:<10} created {token.created_at:%Y-%m-%d %H:%M}  "
              f"last used {used}  {state}{name}")
    return EXIT_OK


async def _token_revoke(config: Config, args: argparse.Namespace) -> int:
    token_id: int = args.id
    from bot.service import open_store
    from bot.store.web import revoke_api_token

    async with open_store(config) as store:
        revoked = await revoke_api_token(store, token_id)
    if revoked is None:
        print(f"hearthbot: there is no token {token_id}", file=sys.stderr)
        return EXIT_FAILED
    print(f"token {token_id} revoked")
    return EXIT_OK


async def _forget(config: Config, args: argparse.Namespace) -> int:
    chat_id: str = args.chat
    platform: str | None = args.platform
    from bot.service import open_store
    from bot.store.retention import forget_chat

    async with open_store(config) as store:
        removed = await forget_chat(store, chat_id, platform)
    where = f"chat {chat_id}" + (f" on {platform}" if platform else "")
    if not removed.total:
        print(f"nothing was stored for {where}")
    else:
        print(f"forgot {where}: removed {removed.describe()}")
    log.info("forgot a chat on request: removed %s", removed.describe())
    return EXIT_OK


def _since(value: str) -> datetime:
    """`--since`: an ISO date or time (UTC), or an age: 30m, 12h, 7d."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if value[:-1].isdigit() and value[-1:] in units:
        moment = datetime.now(UTC) - timedelta(**{units[value[-1]]: int(value[:-1])})
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is neither a date or time nor an age like 12h") from None
    if moment.tzinfo is not None:  # stored times are naive UTC
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


async def _audit(config: Config, args: argparse.Namespace) -> int:
    from bot.service import open_store
    from bot.store.audit import read_audit

    async with open_store(config) as store:
        calls = await read_audit(store, since=args.since, persona=args.persona,
                                 limit=args.limit)
    if not calls:
        print("no tool calls recorded" + (" in that time" if args.since else ""))
    for call in calls:
        when = call.at.strftime("%Y-%m-%d %H:%M:%S") if call.at else "?"
        reason = f"  ({call.error})" if call.error else ""
        print(f"{when}  {call.persona:<8} {call.platform}:{call.chat_id}  {call.tool} "
              f"{call.arguments}  -> {call.outcome} in {call.duration_ms} ms{reason}")
    return EXIT_OK


async def _usage(config: Config, args: argparse.Namespace) -> int:
    from bot.service import open_store
    from bot.store.usage import Tokens, UsageLine, prices, usage

    async with open_store(config) as store:
        lines = await usage(store, prices(config), since=args.since, by=args.by)
    total = UsageLine("total", sum((line.tokens for line in lines), Tokens()),
                      None if any(line.cost is None for line in lines)
                      else sum(line.cost or 0.0 for line in lines))
    if args.json:
        print(json.dumps({"since": args.since.isoformat() if args.since else None,
                          "by": args.by, "lines": [_usage_json(line) for line in lines],
                          "total": _usage_json(total)}, indent=2))
        return EXIT_OK
    if not lines:
        print("no model usage recorded" + (" in that time" if args.since else ""))
        return EXIT_OK
    width = max(len(args.by), *(len(line.key) for line in lines))
    header = (f"{args.by:<{width}}  {'turns':>6}  {'prompt':>10}  {'cached':>10}  "
              f"{'completion':>10}  {'total':>10}  {'cost':>10}")
    print(header)
    print("-" * len(header))
    for line in [*lines, total]:
        if line is total:
            print("-" * len(header))
        tokens = line.tokens
        cost = f"{line.cost:.4f}" if line.cost is not None else "unknown"
        print(f"{line.key:<{width}}  {tokens.turns:>6}  {tokens.prompt:>10,}  "
              f"{tokens.cached:>10,}  {tokens.completion:>10,}  {tokens.total:>10,}  "
              f"{cost:>10}")
    since = f"since {args.since:%Y-%m-%d %H:%M} UTC" if args.since else "all recorded time"
    print(f"({since}; cost per the configured prices per million tokens, 0 for local models; "
          "summaries count as turns of their chat)")
    return EXIT_OK


def _usage_json(line: UsageLine) -> dict[str, object]:
    tokens = line.tokens
    return {"key": line.key, "turns": tokens.turns, "prompt_tokens": tokens.prompt,
            "cached_tokens": tokens.cached, "completion_tokens": tokens.completion,
            "total_tokens": tokens.total, "cost": line.cost}


async def _transcribe(config: Config, args: argparse.Namespace) -> int:
    file: Path = args.file
    from bot.voice.speech import Speech

    try:
        data = await asyncio.to_thread(file.read_bytes)
    except OSError as exc:
        print(f"hearthbot: cannot read {file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    speech = Speech(config.voice)
    try:
        transcript = await speech.transcribe(data)
    except VoiceError as exc:
        log.warning("transcribing %s failed: %s", file, exc)
        print(f"hearthbot: {exc.user_message}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await speech.close()
    if transcript is None:
        print("hearthbot: speech to text is switched off (voice.stt.enabled)", file=sys.stderr)
        return EXIT_USAGE
    print(transcript.text.strip())
    return EXIT_OK


async def _say(config: Config, args: argparse.Namespace) -> int:
    text: str = args.text
    output: Path = args.output
    from bot.voice.speech import Speech

    speech = Speech(config.voice)
    speaker = speech.speaker()
    if speaker is None:
        print("hearthbot: text to speech is switched off (voice.tts.enabled)", file=sys.stderr)
        return EXIT_USAGE
    try:
        await speaker.feed(text)
        clip = await speaker.finish()
    except VoiceError as exc:
        log.warning("speaking failed: %s", exc)
        print(f"hearthbot: {exc.user_message}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await speech.close()
    if clip is None:
        print("hearthbot: there is nothing to say in that text", file=sys.stderr)
        return EXIT_USAGE
    await asyncio.to_thread(output.write_bytes, clip.ogg_opus)
    print(f"wrote {output} ({clip.duration:.1f} s, OGG/Opus 48 kHz mono)", file=sys.stderr)
    return EXIT_OK


async def _unbind(config: Config, args: argparse.Namespace) -> int:
    binding_id: int = args.id
    from bot.service import open_store
    from bot.store.bindings import remove_binding

    async with open_store(config) as store:
        try:
            removed = await remove_binding(store, binding_id)
        except ConfigBinding as exc:
            print(f"hearthbot: {exc.user_message}", file=sys.stderr)
            return EXIT_USAGE
    if removed is None:
        print(f"hearthbot: there is no binding {binding_id}", file=sys.stderr)
        return EXIT_FAILED
    print(f"binding {binding_id} removed")
    return EXIT_OK


async def _list_bindings(config: Config, args: argparse.Namespace) -> int:
    platform: str | None = args.platform
    from bot.service import open_store
    from bot.store.bindings import list_bindings

    async with open_store(config) as store:
        rows = await list_bindings(store, platform)
    if not rows:
        print("no bindings: everyone gets the guest persona")
    for binding in rows:
        print(f"{binding.id:>4}  {_binding_line(binding)}")
    return EXIT_OK


def _binding_line(binding: Binding) -> str:
    who = [binding.platform]
    who.append(binding.chat_kind or "any chat")
    who.append(f"peer {binding.peer_id}" if binding.peer_id else "anyone")
    if binding.group_id:
        who.append(f"group {binding.group_id}")
    if binding.account:
        who.append(f"account {binding.account}")
    note = f"  ({binding.note})" if binding.note else ""
    return f"{' / '.join(who)} -> {binding.persona}  [{binding.source}]{note}"


if __name__ == "__main__":
    raise SystemExit(main())
