"""The configuration: one JSON file, validated strictly, with built-in defaults for everything.

The schema is written as frozen dataclasses; `_parse` walks a JSON document along their type
hints so that every error can name the exact key path and what was expected there.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from bot.errors import ConfigError

BUNDLED_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_PROVIDER = "local"


def _secret() -> Any:
    return field(default=None, metadata={"secret": True})


@dataclass(frozen=True)
class CostSpec:
    """What a model's tokens cost, per million, in whatever currency the owner counts in.

    Local models cost 0 (the default), so that accounting for them never trips a budget.
    `cached` is the price of prompt tokens the backend served from its prompt cache; they
    are part of the prompt tokens it reports, so they are priced at `cached`, not `input`.
    """

    input: float = 0.0
    output: float = 0.0
    cached: float = 0.0


@dataclass(frozen=True)
class ModelSpec:
    id: str
    name: str = ""
    context_window: int = 2048
    max_tokens: int = 512
    capabilities: tuple[str, ...] = ()
    # Embedded provider: a GGUF file (llama.cpp) or an MLX folder / hub id; None = bundled.
    # Managed provider: the weights its server loads (the memory check reads their size, and
    # "{path}" in the managed command stands for it).
    path: str | None = None
    engine: Literal["llama-cpp", "mlx"] | None = None
    # A model that can think before it answers (chain of thought): only then is a persona's
    # `params.think` sent to the backend.
    reasoning: bool = False
    cost: CostSpec = field(default_factory=CostSpec)


@dataclass(frozen=True)
class ManagedSpec:
    """A model server that hearthbot starts, health-checks, restarts and stops itself.

    In `command`, "{model}" stands for the model id and "{path}" for the model's `path`, so one
    provider can serve several models, one at a time.
    """

    command: tuple[str, ...]
    # Asked until it answers 200; None: "{base_url}/models" (OpenAI-compatible) or
    # "/api/version" (Ollama).
    health_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    # From the start of the process to a healthy answer, model loading included.
    start_timeout: float = 120.0


@dataclass(frozen=True)
class ProviderSpec:
    type: Literal["ollama", "openai-compat", "embedded"]
    models: tuple[ModelSpec, ...]
    base_url: str | None = None
    api_key: str | None = _secret()
    # Ollama unloads a model after 5 idle minutes unless told otherwise on every request.
    keep_alive: str = "24h"
    connect_timeout: float = 5.0
    # A cold model can take a while to load before its first token; beyond this we give up.
    first_token_timeout: float = 120.0
    # Longest silence tolerated between two pieces of a streaming reply.
    read_timeout: float = 60.0
    # Embedded provider: the engine's thread count; None: measured default (embedded.py).
    threads: int | None = None
    managed: ManagedSpec | None = None


def _default_providers() -> dict[str, ProviderSpec]:
    return {
        DEFAULT_PROVIDER: ProviderSpec(
            type="embedded",
            models=(
                ModelSpec(
                    id=BUNDLED_MODEL_ID,
                    name="SmolLM2 135M Instruct (bundled)",
                    context_window=2048,
                    max_tokens=256,
                ),
            ),
        )
    }


@dataclass(frozen=True)
class WebSpec:
    """The web chat, the owner's dashboard and the OpenAI-compatible endpoint, served on
    `gateway.bind`:`gateway.port`."""

    enabled: bool = True
    # Binding to anything but loopback is refused unless this is true, and even then only with
    # TLS (tls_cert and tls_key) or behind the reverse proxy named in trusted_proxy.
    allow_remote: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    # The address the reverse proxy connects from; any other peer is refused.
    trusted_proxy: str | None = None
    # The address people type, when it is not http://bind:port (a proxy's https://name).
    public_url: str | None = None
    session_hours: float = 12.0
    link_minutes: float = 10.0


@dataclass(frozen=True)
class ResidencySpec:
    """Keeping exactly one model loaded and warm."""

    # At start, the backend is asked this many times, this far apart, before giving up on it
    # (the service keeps running and loads the model once the backend answers).
    wait_tries: int = 30
    wait_seconds: float = 2.0
    # How often to check that the model is still loaded (Ollama evicts under memory pressure)
    # and to load it again if it is not.
    check_seconds: float = 60.0
    # Refuse to load a model whose estimated peak memory exceeds what is available.
    memory_check: bool = True
    # A switch waits this long for replies under way on the previous model to finish.
    switch_wait_seconds: float = 300.0
    # After a persona's model failed and a fallback answered, later turns ask the model again
    # with one quick ping at most this often; in between they go straight to the fallback.
    fallback_probe_seconds: float = 30.0


@dataclass(frozen=True)
class GatewaySpec:
    port: int = 18789
    bind: str = "127.0.0.1"
    web: WebSpec = field(default_factory=WebSpec)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    providers: dict[str, ProviderSpec] = field(default_factory=_default_providers)
    # On SIGTERM/SIGINT, replies under way get this long to finish before the service exits;
    # what is cut off then is answered at the next start.
    stop_seconds: float = 10.0
    # How long the owner has to approve a call to a tool under a persona's `tools.ask`; no
    # answer in that time means no.
    approval_seconds: float = 120.0
    residency: ResidencySpec = field(default_factory=ResidencySpec)


@dataclass(frozen=True)
class RegistryEntry:
    alias: str


@dataclass(frozen=True)
class AgentDefaults:
    active_model: str = f"{DEFAULT_PROVIDER}/{BUNDLED_MODEL_ID}"
    model_registry: dict[str, RegistryEntry] = field(default_factory=dict)


# The six tools, by their exact names. The policy refers to them; persona/policy.py turns a
# persona's ToolPolicy into the set it may call, and bot/tools implements exactly these.
TOOL_NAMES: tuple[str, ...] = (
    "file_read",
    "knowledge_lookup",
    "code_interpreter_sandbox",
    "shell_exec",
    "system_process",
    "external_fetch",
)


@dataclass(frozen=True)
class ToolPolicy:
    """Which tools a persona may call. Deny always wins; a tool is callable only when named.

    `allow` left out (None) means the role's default set; `access: "full"` means all tools;
    `ask` names tools that are allowed but need the owner's approval on every call.
    """

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()
    ask: tuple[str, ...] = ()
    access: Literal["full"] | None = None


@dataclass(frozen=True)
class GenerationParams:
    # Small local models loop at temperature 0; these keep short replies usable.
    temperature: float = 0.2
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    # Caps the reply below the model's own `max_tokens` (never above it).
    max_tokens: int | None = None
    # Chain of thought for models marked `reasoning`: true asks the backend to think first,
    # false to answer straight away, null leaves it to the model's default.
    think: bool | None = None


@dataclass(frozen=True)
class BudgetSpec:
    """A persona's daily allowance; the day starts at 00:00 UTC. Once either is spent, new
    turns are refused with one sentence saying when it resets; commands still work."""

    # Prompt and completion tokens together, as the backends counted them.
    daily_tokens: int | None = None
    # In the currency of the models' `cost` prices.
    daily_cost: float | None = None


@dataclass(frozen=True)
class AgentInstance:
    role: Literal["admin", "guest"]
    model: str | None = None
    system_prompt: str | None = None
    workspace: str | None = None
    tools: ToolPolicy = field(default_factory=ToolPolicy)
    params: GenerationParams = field(default_factory=GenerationParams)
    # "inbound": answer a voice note with a voice note as well as text; "always": every reply.
    voice_replies: Literal["off", "inbound", "always"] = "inbound"
    # "provider/model" labels (or aliases) that answer, in order, when the persona's model is
    # down; the bundled embedded model makes a natural last one.
    fallback: tuple[str, ...] = ()
    budget: BudgetSpec | None = None


def _default_instances() -> dict[str, AgentInstance]:
    # No `allow` list: each role gets its default tools (persona/policy.py). The guest's deny
    # list is spelled out so that reading the defaults shows what a stranger can never reach.
    return {
        "admin": AgentInstance(role="admin"),
        "guest": AgentInstance(
            role="guest",
            tools=ToolPolicy(deny=("shell_exec", "system_process", "external_fetch")),
        ),
    }


@dataclass(frozen=True)
class BindingSpec:
    persona: str
    platform: str
    chat_kind: Literal["dm", "group"] | None = None
    peer: str | None = None
    group: str | None = None
    account: str | None = None
    note: str = ""


def _default_bindings() -> tuple[BindingSpec, ...]:
    # Whoever sits at this machine's terminal owns it: the console chat is the owner's DM.
    return (
        BindingSpec(
            persona="admin",
            platform="console",
            chat_kind="dm",
            peer="owner",
            note="the local terminal is the owner",
        ),
        BindingSpec(
            persona="admin",
            platform="web",
            chat_kind="dm",
            peer="owner",
            note="the owner, signed in to the web chat with a one-time link",
        ),
    )


@dataclass(frozen=True)
class AgentsSpec:
    default: AgentDefaults = field(default_factory=AgentDefaults)
    instances: dict[str, AgentInstance] = field(default_factory=_default_instances)
    bindings: tuple[BindingSpec, ...] = field(default_factory=_default_bindings)


@dataclass(frozen=True)
class TelegramChannel:
    # None: read TELEGRAM_BOT_TOKEN from the environment.
    token: str | None = _secret()
    enabled: bool = True
    # A self-hosted Bot API server can stand in for Telegram's own.
    api_base_url: str = "https://api.telegram.org/bot"
    file_base_url: str = "https://api.telegram.org/file/bot"
    poll_timeout: int = 30
    # Seconds between updates of a streaming reply. Edits in groups faster than about 1 s get
    # flood-limited for tens of seconds; drafts in DMs are lighter.
    edit_interval: float = 1.5
    draft_interval: float = 0.4


@dataclass(frozen=True)
class DiscordChannel:
    # None: read DISCORD_BOT_TOKEN from the environment.
    token: str | None = _secret()
    enabled: bool = True
    # Privileged: without it the bot reads only DMs, mentions and replies to it, which is all
    # it answers anyway.
    message_content_intent: bool = False
    # Creating and editing share a bucket of about 5 per 5 s per channel.
    edit_interval: float = 1.2


@dataclass(frozen=True)
class ChannelsSpec:
    telegram: TelegramChannel | None = None
    discord: DiscordChannel | None = None


@dataclass(frozen=True)
class SpeechToTextSpec:
    enabled: bool = True
    # "tiny.en" or "base" (bundled weights), or the path of a CTranslate2 Whisper folder.
    model: str = "tiny.en"
    compute_type: str = "int8"
    threads: int | None = None
    # None: detected per note (multilingual models only).
    language: str | None = None
    vad_filter: bool = False


@dataclass(frozen=True)
class TextToSpeechSpec:
    enabled: bool = True
    # A piper .onnx voice (its .onnx.json beside it); None: the bundled voice.
    voice: str | None = None


@dataclass(frozen=True)
class VoiceSpec:
    stt: SpeechToTextSpec = field(default_factory=SpeechToTextSpec)
    tts: TextToSpeechSpec = field(default_factory=TextToSpeechSpec)
    # In groups a voice note counts as addressed to the bot when its transcript says one of
    # these, or a name the bot has on that platform (user name, display name, nickname).
    wake_words: tuple[str, ...] = ("hearthbot",)
    # Synthesis jobs waiting at once, process-wide; beyond it new sentences wait their turn.
    queue_size: int = 16
    # Longer notes are refused before they are downloaded: one transcriber serves everyone.
    max_seconds: float = 300.0
    # Group voice notes that neither mention nor reply to the bot are transcribed only to
    # hear whether they name it: at most this many an hour, so a busy server cannot keep the
    # transcriber (and the disk) busy with talk that is not for the bot. 0 turns it off.
    unaddressed_per_hour: int = 30
    # Load the speech models at start rather than at the first voice note (and the first
    # spoken reply). Loaded, they hold about 200 MB for the life of the process; waiting, the
    # first voice note pays about a second once, and the memory stays the model's.
    preload: bool = False


@dataclass(frozen=True)
class ContextSpec:
    """The context guard. Shares are of the prompt budget: the model's window less the reply's
    output budget, the tools' schemas and the safety margin."""

    # Once the next request would fill this share of the budget, the oldest turns are folded
    # into the running summary (after the reply is delivered).
    summarize_at: float = 0.75
    # After folding, the turns kept verbatim fill at most this share (never fewer than the
    # last two exchanges).
    keep_share: float = 0.4
    # The running summary may take this share; a longer one counts as a failed summary.
    summary_share: float = 0.2
    # Kept free of every request, as a share of the window: token counts of remote backends
    # are estimates, corrected by what the backend reports.
    margin: float = 0.05


@dataclass(frozen=True)
class ImagesSpec:
    """Photos and image files sent to the bot, for models whose capabilities list "image"."""

    # Larger files are refused before they are downloaded (the platform says the size first).
    # Telegram's Bot API serves files up to 20 MB; Discord attachments go up to 500 MB.
    max_bytes: int = 10_000_000
    # Longest side, in pixels, after downscaling: what a vision model is sent. Its tokens grow
    # with the pixels, and most vision encoders see no more than about this anyway.
    max_side: int = 1024
    # Images of one message that reach the model (Discord allows ten attachments): each costs
    # hundreds of prompt tokens and seconds of encoding; the person is told about the rest.
    max_per_message: int = 4


DEFAULT_HISTORY_DAYS = 90


@dataclass(frozen=True)
class StoreSpec:
    # A SQLAlchemy async URL; None means a SQLite file in the data directory.
    url: str | None = None
    # Conversations (messages, summaries, turn records, stored inbound messages) older than
    # this many days are deleted; None or 0 keeps them forever.
    history_days: int | None = DEFAULT_HISTORY_DAYS


@dataclass(frozen=True)
class Config:
    gateway: GatewaySpec = field(default_factory=GatewaySpec)
    agents: AgentsSpec = field(default_factory=AgentsSpec)
    channels: ChannelsSpec = field(default_factory=ChannelsSpec)
    voice: VoiceSpec = field(default_factory=VoiceSpec)
    store: StoreSpec = field(default_factory=StoreSpec)
    context: ContextSpec = field(default_factory=ContextSpec)
    images: ImagesSpec = field(default_factory=ImagesSpec)
    data_dir: str | None = None

    def resolve_model(self, reference: str | None) -> tuple[str, ProviderSpec, ModelSpec]:
        """Map `provider/model-id`, an alias, or None (the active model) to its provider."""
        ref = reference or self.agents.default.active_model
        aliases = {e.alias: target for target, e in self.agents.default.model_registry.items()}
        ref = aliases.get(ref, ref)
        provider_name, _, model_id = ref.partition("/")
        provider = self.gateway.providers.get(provider_name)
        if provider is None:
            raise KeyError(ref)
        for model in provider.models:
            if model.id == model_id:
                return provider_name, provider, model
        raise KeyError(ref)

    @property
    def channels_enabled(self) -> tuple[str, ...]:
        configured = (("telegram", self.channels.telegram), ("discord", self.channels.discord))
        return tuple(name for name, channel in configured if channel and channel.enabled)

    def store_url(self) -> str:
        if self.store.url:
            return self.store.url
        return f"sqlite+aiosqlite:///{self.data_path() / 'hearthbot.db'}"

    def data_path(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        return default_data_dir()

    def secrets(self) -> list[str]:
        """Every secret the service will use, so logs can redact them: those in the config and
        the platform tokens read from the environment.

        Each secret is listed as written and as used: the adapters strip stray whitespace
        (a token pasted with a newline, or read from the environment), so a log line carries
        the stripped value, never the one in the file. The log formatter adds the encoded
        forms a URL would carry.
        """
        written: list[str] = []
        _plain(self, written)
        for channel, variable in ((self.channels.telegram, "TELEGRAM_BOT_TOKEN"),
                                  (self.channels.discord, "DISCORD_BOT_TOKEN")):
            if channel is not None and not channel.token:
                written.append(os.environ.get(variable, ""))
        found: list[str] = []
        for value in written:
            for form in (value, value.strip()):
                if form.strip() and form not in found:
                    found.append(form)
        return found


def default_data_dir() -> Path:
    if home := os.environ.get("HEARTHBOT_HOME"):
        return Path(home).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "hearthbot"


def default_config_path() -> Path | None:
    """The config file used when none is named: $HEARTHBOT_CONFIG, else the XDG location."""
    if named := os.environ.get("HEARTHBOT_CONFIG"):
        return Path(named).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    candidate = Path(base) / "hearthbot" / "config.json"
    return candidate if candidate.exists() else None


def load_config(path: Path | None) -> Config:
    """Read and validate a config file; no file means the built-in defaults."""
    if path is None:
        return _check_references(Config())
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{path} is not a UTF-8 text file") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("", f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                              f"{exc.msg})") from exc
    return parse_config(raw)


def parse_config(raw: object) -> Config:
    config = _parse(Config, raw, "")
    assert isinstance(config, Config)
    return _check_references(config)


def _check_references(config: Config) -> Config:
    if config.store.history_days is not None and config.store.history_days < 0:
        raise ConfigError("store.history_days",
                          "expected a number of days, 0 or more (null or 0: keep forever)")
    if config.gateway.approval_seconds <= 0:
        raise ConfigError("gateway.approval_seconds", "expected a number of seconds above 0")
    _check_context(config.context)
    _check_images(config.images)
    for name, provider in config.gateway.providers.items():
        where = f"gateway.providers.{name}"
        _check_capabilities(provider, where)
        if provider.type != "embedded" and not provider.base_url:
            raise ConfigError(f"{where}.base_url",
                              f"required for a provider of type {provider.type}")
        if not provider.models:
            raise ConfigError(f"{where}.models", "at least one model is required")
        if provider.managed is not None:
            _check_managed(provider, where)
    residency = config.gateway.residency
    if residency.wait_tries < 1 or residency.wait_seconds < 0 or residency.check_seconds <= 0:
        raise ConfigError("gateway.residency",
                          "wait_tries must be 1 or more, wait_seconds 0 or more and "
                          "check_seconds more than 0")
    known = sorted(f"{n}/{m.id}" for n, p in config.gateway.providers.items() for m in p.models)

    def check(ref: str | None, where: str) -> None:
        try:
            config.resolve_model(ref)
        except KeyError:
            raise ConfigError(
                where, f"{ref!r} names no configured model (expected one of: {', '.join(known)})"
            ) from None

    check(config.agents.default.active_model, "agents.default.active_model")
    for target in config.agents.default.model_registry:
        check(target, f"agents.default.model_registry.{target}")
    for name, instance in config.agents.instances.items():
        if instance.model is not None:
            check(instance.model, f"agents.instances.{name}.model")
        for index, fallback in enumerate(instance.fallback):
            check(fallback, f"agents.instances.{name}.fallback[{index}]")
        if instance.budget is not None:
            _check_budget(instance.budget, f"agents.instances.{name}.budget")
    for name, provider in config.gateway.providers.items():
        for index, model in enumerate(provider.models):
            for key in ("input", "output", "cached"):
                if getattr(model.cost, key) < 0:
                    raise ConfigError(f"gateway.providers.{name}.models[{index}].cost.{key}",
                                      "expected a price per million tokens, 0 or more")
    if residency.fallback_probe_seconds < 0:
        raise ConfigError("gateway.residency.fallback_probe_seconds",
                          "expected a number of seconds, 0 or more")
    for name, instance in config.agents.instances.items():
        _check_tool_policy(instance.tools, f"agents.instances.{name}.tools")
    guest = config.agents.instances.get("guest")
    if guest is None or guest.role != "guest":
        raise ConfigError("agents.instances.guest",
                          "an instance named 'guest' with role 'guest' is required: it answers "
                          "everyone who is not bound to another persona")
    for index, binding in enumerate(config.agents.bindings):
        if binding.persona not in config.agents.instances:
            raise ConfigError(
                f"agents.bindings[{index}].persona",
                f"{binding.persona!r} is not an instance "
                f"(expected one of: {', '.join(sorted(config.agents.instances))})",
            )
        if config.agents.instances[binding.persona].role == "admin" and not grants_admin(binding):
            # The router would refuse it at run time anyway; a config that cannot mean what it
            # says is refused up front.
            raise ConfigError(
                f"agents.bindings[{index}]",
                f"persona {binding.persona!r} has the admin role, which is only granted in a DM "
                'with one named person: set chat_kind "dm" and the peer\'s id (not "*")',
            )
    return config


def _check_budget(budget: BudgetSpec, where: str) -> None:
    if budget.daily_tokens is None and budget.daily_cost is None:
        raise ConfigError(where, "give daily_tokens, daily_cost or both (or leave the budget "
                                 "out for none)")
    if budget.daily_tokens is not None and budget.daily_tokens < 1:
        raise ConfigError(f"{where}.daily_tokens", "expected a number of tokens, 1 or more")
    if budget.daily_cost is not None and budget.daily_cost <= 0:
        raise ConfigError(f"{where}.daily_cost", "expected an amount above 0")


def _check_managed(provider: ProviderSpec, where: str) -> None:
    assert provider.managed is not None
    if provider.type == "embedded":
        raise ConfigError(f"{where}.managed",
                          "an embedded model runs inside hearthbot; only an ollama or "
                          "openai-compat provider can have a managed server")
    if not provider.managed.command:
        raise ConfigError(f"{where}.managed.command",
                          "the command that starts the server is required")
    host = urlsplit(provider.base_url or "").hostname or ""
    if not is_local_url(provider.base_url):
        raise ConfigError(f"{where}.base_url",
                          f"a managed server runs on this machine; base_url must name "
                          f"127.0.0.1, ::1 or localhost, not {host!r}")


def is_local_url(url: str | None) -> bool:
    """Whether a backend URL names this machine (its memory is ours to budget)."""
    host = urlsplit(url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_context(spec: ContextSpec) -> None:
    for key, low, high in (("summarize_at", 0.1, 1.0), ("keep_share", 0.05, 0.9),
                           ("summary_share", 0.05, 0.5), ("margin", 0.0, 0.5)):
        value: float = getattr(spec, key)
        if not low <= value <= high:
            raise ConfigError(f"context.{key}", f"expected a share between {low:g} and "
                                                f"{high:g}, got {value:g}")
    if spec.keep_share + spec.summary_share >= spec.summarize_at:
        # Otherwise a fresh summary and the kept turns alone would ask for the next summary.
        raise ConfigError("context.keep_share",
                          "keep_share plus summary_share must stay below summarize_at")


# What a model entry may declare: "image" lets photos reach it, "tools" lets tools be offered.
CAPABILITIES = ("text", "image", "tools")


def _check_capabilities(provider: ProviderSpec, where: str) -> None:
    for m, model in enumerate(provider.models):
        for c, capability in enumerate(model.capabilities):
            if capability not in CAPABILITIES:
                raise ConfigError(f"{where}.models[{m}].capabilities[{c}]",
                                  f"unknown capability {capability!r} (expected one of: "
                                  f"{', '.join(CAPABILITIES)})")
            if capability == "image" and provider.type == "embedded":
                # Said up front: photos would otherwise be dropped without a word.
                raise ConfigError(f"{where}.models[{m}].capabilities[{c}]",
                                  "the embedded engine reads text only; serve a vision model "
                                  "through an ollama or openai-compat provider")


def _check_images(spec: ImagesSpec) -> None:
    if spec.max_bytes < 1:
        raise ConfigError("images.max_bytes", "expected a number of bytes above 0")
    if not 64 <= spec.max_side <= 8192:
        raise ConfigError("images.max_side", "expected a number of pixels from 64 to 8192")
    if spec.max_per_message < 1:
        raise ConfigError("images.max_per_message", "expected a number of images, 1 or more")


def _check_tool_policy(policy: ToolPolicy, where: str) -> None:
    """Every tool name must be one of the six, exactly: a typo must not silently allow or
    fail to deny something."""
    for key in ("allow", "deny", "ask"):
        names: tuple[str, ...] = getattr(policy, key) or ()
        for index, name in enumerate(names):
            if name not in TOOL_NAMES:
                raise ConfigError(f"{where}.{key}[{index}]",
                                  f"{name!r} is not a tool (expected one of: "
                                  f"{', '.join(TOOL_NAMES)})")
    if policy.access == "full" and policy.allow is not None:
        raise ConfigError(f"{where}.access",
                          "give either access \"full\" or an allow list, not both")


def grants_admin(binding: BindingSpec) -> bool:
    """Whether a binding is narrow enough to carry the admin role: one DM with a named peer."""
    peer = (binding.peer or "").strip()
    return binding.chat_kind == "dm" and peer not in ("", "*")


def binding_problem(config: Config, spec: BindingSpec) -> str | None:
    """Why a binding added at run time (the CLI, the dashboard) cannot be made, or None."""
    if spec.persona not in config.agents.instances:
        return (f"unknown persona {spec.persona!r} (expected one of: "
                f"{', '.join(sorted(config.agents.instances))})")
    if not spec.platform.strip():
        return "a binding needs a platform"
    if config.agents.instances[spec.persona].role == "admin" and not grants_admin(spec):
        return ("an admin persona is only ever granted in a DM with a known person: "
                "give the chat kind dm and the peer's id")
    return None


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: str, path: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(path, f"environment variable {name} is not set")
        return os.environ[name]

    return _ENV_REFERENCE.sub(substitute, value)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return f"an object of {_describe(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "an object"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             type(None): "null"}
    return names.get(tp, str(tp))


def _parse(tp: Any, value: object, path: str) -> Any:
    origin = get_origin(tp)
    shown = path or "the top level"
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _parse(inner, value, path)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(shown, f"expected {_describe(tp)}, got {json.dumps(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(shown, f"expected {_describe(tp)}, got {_json_type(value)}")
        return tuple(_parse(get_args(tp)[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(shown, f"expected {_describe(tp)}, got {_json_type(value)}")
        return {k: _parse(get_args(tp)[1], v, _join(path, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _parse_object(tp, value, path)
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise ConfigError(shown, f"expected {_describe(tp)}, got {_json_type(value)}")
        return _expand_env(value, shown) if isinstance(value, str) else value
    if tp is int or tp is float:
        accepted = (int,) if tp is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ConfigError(shown, f"expected {_describe(tp)}, got {_json_type(value)}")
        return tp(value)
    raise TypeError(f"unsupported schema type {tp!r}")  # a bug in the schema, not in the file


def _parse_object(cls: Any, value: object, path: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(path or "the top level", f"expected an object, got {_json_type(value)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            raise ConfigError(
                _join(path, key),
                f"unknown key (expected one of: {', '.join(fields)})",
            )
    kwargs: dict[str, Any] = {}
    for name, spec in fields.items():
        if name in value:
            kwargs[name] = _parse(hints[name], value[name], _join(path, name))
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(_join(path, name),
                              f"required key is missing ({_describe(hints[name])})")
    return cls(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {json.dumps(value)}"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _plain(value: object, secrets: list[str]) -> Any:
    """`value` as JSON data with each secret masked; the secrets found are added to `secrets`.

    One walk serves both `masked_dict` (what to show) and `Config.secrets` (what to redact),
    so the two can never disagree about which values are secret.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.metadata.get("secret") and isinstance(item, str) and item:
                secrets.append(item)
                out[f.name] = "********"
            else:
                out[f.name] = _plain(item, secrets)
        return out
    if isinstance(value, Mapping):
        return {k: _plain(v, secrets) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v, secrets) for v in value]
    return value


def masked_dict(config: Config) -> dict[str, Any]:
    """The effective config as plain JSON data, with every secret replaced by asterisks."""
    result: dict[str, Any] = _plain(config, [])
    return result
