"""Residency: exactly one model loaded at a time, warm before traffic, kept warm, switched at
run time without a restart. This is the only place that loads or unloads a model.

Every model turn reaches its backend through a `ModelTarget`, whose stream first takes a place
on the resident model (`_enter`). A switch (the owner's `/model`, `hearthbot model use`, or a
turn whose persona names another model) stops new turns from entering, waits for the replies
under way to finish, unloads the previous model (Ollama `keep_alive: 0`, a managed server
stopped, embedded weights freed), loads the next one and warms it, then lets the waiting turns
in: they are answered by the new model. Before anything is unloaded, the next model's memory
need is compared with what is available, and a model that would not fit is refused.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bot.config import Config, GenerationParams, ModelSpec, ProviderSpec, is_local_url
from bot.errors import ModelNotFound, ProviderError, ProviderTimeout, ProviderUnavailable
from bot.managed import ManagedServer, ManagedStatus, default_health_url
from bot.memory_fit import (
    MemoryNeed,
    available_memory_bytes,
    check_fits,
    weights_bytes,
)
from bot.providers import (
    ChatMessage,
    ChatProvider,
    Delta,
    StreamEnd,
    TextDelta,
    ToolSpec,
    build_provider,
)
from bot.providers.base import TokenCounting

log = logging.getLogger(__name__)


class UnknownModel(ProviderError):
    def __init__(self, reference: str, known: Sequence[str]) -> None:
        message = (f"There is no model called {reference!r}. Known: {', '.join(known)}."
                   if known else f"There is no model called {reference!r}.")
        super().__init__(message, user_message=message)


@dataclass(frozen=True)
class RegistryLine:
    label: str  # provider/model-id
    alias: str | None
    name: str
    active: bool
    resident: bool


@dataclass(frozen=True)
class TurnFigures:
    label: str
    at: datetime
    first_token_seconds: float | None
    completion_tokens: int | None
    total_seconds: float

    @property
    def tokens_per_second(self) -> float | None:
        if not self.completion_tokens or self.completion_tokens < 2 or (
                self.first_token_seconds is None):
            return None
        decoding = self.total_seconds - self.first_token_seconds
        return (self.completion_tokens - 1) / decoding if decoding > 0 else None


@dataclass
class Residency:
    """What is loaded, for `hearthbot status`."""

    active: str
    resident: str | None = None
    state: str = "not loaded"  # not loaded | loading | resident | switching | failed
    cold_start_seconds: float | None = None
    loaded_at: datetime | None = None
    last_error: str | None = None
    switches: int = 0
    rewarms: int = 0
    waiting_for_replies: int = 0  # a switch waits for these, under way on the old model
    last_turn: TurnFigures | None = None
    memory_needed_gb: float | None = None
    memory_available_gb: float | None = None
    managed: list[ManagedStatus] = field(default_factory=list)
    # Models that failed with a fallback standing in for them.
    down: list[DownModel] = field(default_factory=list)


@dataclass
class DownModel:
    """A persona's model that stopped answering; a fallback answers its turns meanwhile."""

    label: str
    since: datetime
    error: str
    answered_by: str | None = None  # the fallback that answered its last turn
    requests: int = 0  # answered by a fallback since it went down (replies, tool steps)
    probed: float = 0.0  # time.monotonic() of the last attempt to reach it


class ModelTarget:
    """The model one turn talks to, resolved when the turn starts.

    `provider.stream` waits while a switch is under way and always runs on the resident model;
    a target that follows the active model (no model named by the persona) is answered by
    whichever model is active when its stream starts, and `label` then names that one.
    """

    def __init__(self, host: ModelHost, reference: str | None, label: str,
                 model: ModelSpec, fallbacks: tuple[str, ...] = ()) -> None:
        self.reference = reference
        self.label = label
        self.model = model
        # Labels that answer, in order, when the model of `reference` is down.
        self.fallbacks = fallbacks
        # The model this target was meant for, once a fallback answered instead.
        self.fallback_from: str | None = None
        self.provider: ChatProvider = _ResidentStream(host, self)


class _ResidentStream:
    """The ChatProvider a turn sees: the resident backend behind the residency gate."""

    def __init__(self, host: ModelHost, target: ModelTarget) -> None:
        self._host = host
        self._target = target

    async def count_tokens(self, model: ModelSpec, messages: Sequence[ChatMessage],
                           tools: Sequence[ToolSpec] = ()) -> int | None:
        """The resident backend's own count, where it has a tokenizer at hand."""
        provider, spec = self._host.backend(self._target.label)
        if isinstance(provider, TokenCounting):
            return await provider.count_tokens(spec, messages, tools)
        return None

    async def stream(self, model: ModelSpec, messages: Sequence[ChatMessage],
                     params: GenerationParams, tools: Sequence[ToolSpec] = ()
                     ) -> AsyncIterator[Delta]:
        """The reply from the persona's model or, when that one is down (unreachable, or
        silent past its timeout, after the managed server's own restart), from the first of
        its fallbacks that answers. Nothing is retried once any of the reply has been passed
        on: a half-said reply cannot be taken back."""
        host, target = self._host, self._target
        primary = host.label(target.reference)
        candidates = [primary, *(f for f in target.fallbacks if f != primary)]
        for index, label in enumerate(candidates):
            last = index == len(candidates) - 1
            if not last and not await host._worth_trying(label, primary):
                continue
            said = False
            # The persona's own model follows the active one when it names none.
            want = (functools.partial(host.label, target.reference) if label == primary
                    else _fixed(label))
            named = target.reference is not None or label != primary
            try:
                async for delta in self._stream_on(want, named, messages, params, tools):
                    said = True
                    yield delta
            except (ProviderUnavailable, ProviderTimeout) as exc:
                if len(candidates) > 1:
                    host._failed(label, exc)
                if said or last:
                    raise
                continue
            if label != primary:
                host._stood_in(primary, target.label)
            else:
                host._recovered(primary)
            target.fallback_from = primary if label != primary else None
            return

    async def _stream_on(self, want: Callable[[], str], named: bool,
                         messages: Sequence[ChatMessage], params: GenerationParams,
                         tools: Sequence[ToolSpec]) -> AsyncIterator[Delta]:
        label = await self._host._enter(want, named)
        try:
            await self._host._managed_ready(label)
            provider, spec = self._host.backend(label)
            self._target.label, self._target.model = label, spec
            started = time.perf_counter()
            first: float | None = None
            tokens: int | None = None
            retried = said = False
            while True:
                try:
                    async for delta in provider.stream(spec, messages, params, tools):
                        said = True
                        if first is None and isinstance(delta, TextDelta):
                            first = time.perf_counter() - started
                        if isinstance(delta, StreamEnd):
                            tokens = delta.completion_tokens
                        yield delta
                    break
                except ProviderUnavailable:
                    # A managed server that died just now is being restarted: a request that
                    # found it gone waits for it once, instead of failing the turn.
                    if said or retried or not await self._host._managed_recovered(label):
                        raise
                    retried = True
            self._host.state.last_turn = TurnFigures(label, datetime.now(UTC), first, tokens,
                                                     time.perf_counter() - started)
        finally:
            await self._host._leave()

    async def warm(self, model: ModelSpec) -> None:
        await self._host.warm(self._target.reference)

    async def unload(self, model: ModelSpec) -> None:
        """Only the host unloads, as part of a switch."""

    async def ping(self) -> None:
        provider, _ = self._host.backend(self._target.label)
        await provider.ping()

    async def loaded_models(self) -> list[str] | None:
        provider, _ = self._host.backend(self._target.label)
        return await provider.loaded_models()

    async def model_size(self, model: ModelSpec) -> int | None:
        provider, spec = self._host.backend(self._target.label)
        return await provider.model_size(spec)

    async def close(self) -> None:
        """The host closes the backends."""


class ModelHost:
    def __init__(self, config: Config, *,
                 available_memory: Callable[[], int | None] = available_memory_bytes) -> None:
        self._config = config
        self._spec = config.gateway.residency
        self._available_memory = available_memory
        self._providers: dict[str, ChatProvider] = {}
        self._servers: dict[str, ManagedServer] = {}
        self.state = Residency(active=self._canonical(None))
        self._cond = asyncio.Condition()
        self._switch_lock = asyncio.Lock()
        self._switching = False
        self._busy = 0  # streams under way on the resident model
        self._down: dict[str, DownModel] = {}

    # --- names ----------------------------------------------------------------------------

    def label(self, reference: str | None) -> str:
        """`provider/model-id` for a reference: an alias, a label, or None (the active one)."""
        if reference is None:
            return self.state.active
        try:
            return self._canonical(reference)
        except KeyError:
            raise UnknownModel(reference, [line.alias or line.label
                                           for line in self.registry()]) from None

    def target(self, reference: str | None, fallback: Sequence[str] = ()) -> ModelTarget:
        """The model for a persona's reference (None: the active model), with the persona's
        fallbacks. While that model is down, the target starts out as the fallback that
        answered last, so the prompt is fitted to the model most likely to answer it."""
        label = self.label(reference)
        fallbacks = tuple(self.label(f) for f in fallback)
        down = self._down.get(label)
        shown = down.answered_by if down is not None and down.answered_by in fallbacks else None
        return ModelTarget(self, reference, shown or label, self._resolve(shown or label)[2],
                           fallbacks)

    def registry(self) -> list[RegistryLine]:
        """The models the owner can switch between: the registry, or every configured model
        when the config names none; the active one is always listed."""
        aliases = {self._canonical(target): entry.alias
                   for target, entry in self._config.agents.default.model_registry.items()}
        labels = list(aliases) or [f"{name}/{m.id}"
                                   for name, p in self._config.gateway.providers.items()
                                   for m in p.models]
        if self.state.active not in labels:
            labels.insert(0, self.state.active)
        lines = []
        for label in labels:
            model = self._resolve(label)[2]
            lines.append(RegistryLine(label, aliases.get(label), model.name or model.id,
                                      label == self.state.active,
                                      label == self.state.resident))
        return lines

    def pinned(self) -> dict[str, str]:
        """Personas that name their own model: persona name → model label."""
        return {name: self._canonical(instance.model)
                for name, instance in self._config.agents.instances.items()
                if instance.model is not None}

    def _canonical(self, reference: str | None) -> str:
        provider_name, _, model = self._config.resolve_model(reference)
        return f"{provider_name}/{model.id}"

    def _resolve(self, label: str) -> tuple[str, ProviderSpec, ModelSpec]:
        return self._config.resolve_model(label)

    def backend(self, label: str) -> tuple[ChatProvider, ModelSpec]:
        provider_name, spec, model = self._resolve(label)
        provider = self._providers.get(provider_name)
        if provider is None:
            provider = self._providers[provider_name] = build_provider(provider_name, spec)
        return provider, model

    def _server(self, provider_name: str) -> ManagedServer | None:
        spec = self._config.gateway.providers[provider_name]
        if spec.managed is None:
            return None
        server = self._servers.get(provider_name)
        if server is None:
            assert spec.base_url is not None
            health = spec.managed.health_url or default_health_url(spec.type, spec.base_url)
            server = self._servers[provider_name] = ManagedServer(provider_name, spec.managed,
                                                                  health)
        return server

    # --- start, warm, switch --------------------------------------------------------------

    async def start(self) -> float:
        """At service start: wait (bounded) for the active model's backend, check that the
        model fits, load and warm it. Returns the cold-start seconds; raises a ProviderError
        whose text is one sentence saying what is wrong."""
        label = self.state.active
        if self._resolve(label)[1].managed is None:
            await self._wait_for_backend(label)
        return await self._switch_to(lambda: label, why="start")

    async def _wait_for_backend(self, label: str) -> None:
        provider, _ = self.backend(label)
        provider_name, spec, _ = self._resolve(label)
        tries, pause = self._spec.wait_tries, self._spec.wait_seconds
        started = time.monotonic()
        for attempt in range(1, tries + 1):
            try:
                await provider.ping()
                return
            except ProviderUnavailable as exc:
                if attempt == tries:
                    waited = time.monotonic() - started
                    raise ProviderUnavailable(
                        f"the model server for {label} at {spec.base_url} did not answer "
                        f"after {tries} tries over {waited:.{0 if waited >= 10 else 1}f} s; "
                        f"start it (or check "
                        f"gateway.providers.{provider_name}.base_url) and hearthbot loads the "
                        "model when it answers") from exc
                log.info("waiting for %s (try %d of %d): %s", spec.base_url, attempt, tries,
                         exc)
                await asyncio.sleep(pause)

    async def warm(self, reference: str | None = None) -> float:
        """Make the model of `reference` (None: the active one) the resident one and warm it;
        returns the seconds that took. When it already is resident, it is warmed again."""
        label = self.label(reference)
        if reference is None:
            return await self._switch_to(lambda: self.state.active, why="warm", rewarm=True)
        return await self._switch_to(lambda: label, why="warm", rewarm=True)

    async def switch(self, reference: str) -> float:
        """Make another model the active one: `/model ALIAS`, `hearthbot model use ALIAS`.

        The memory check comes first: a model that does not fit is refused while the previous
        one stays loaded and active. Turns that arrive during the switch wait for it and are
        answered by the new model. Returns the seconds the new model took to load."""
        label = self.label(reference)
        if label == self.state.active and label == self.state.resident:
            return 0.0
        await self.check_memory(label, self.state.resident)
        previous = self.state.active
        self.state.active = label
        log.info("switching the active model from %s to %s", previous, label)
        try:
            return await self._switch_to(lambda: self.state.active, why="switch")
        except ProviderError:
            if self.state.active == label:
                self.state.active = previous
            raise

    async def _switch_to(self, wanted: Callable[[], str], *, why: str, enter: bool = False,
                         rewarm: bool = False) -> float:
        """Make `wanted()` (read under the switch lock) the resident model. With `enter`, the
        caller also takes a place on it before any other switch can start."""
        async with self._switch_lock:
            label = wanted()
            async with self._cond:
                if label == self.state.resident and self.state.state == "resident" \
                        and not rewarm:
                    self._busy += enter
                    return 0.0
                self._switching = True
                self.state.state = "switching" if self.state.resident else "loading"
                if self._busy:
                    log.info("switching to %s once %d replies under way finish", label,
                             self._busy)
                self.state.waiting_for_replies = self._busy
                try:
                    await asyncio.wait_for(self._cond.wait_for(lambda: self._busy == 0),
                                           self._spec.switch_wait_seconds)
                except TimeoutError:
                    log.warning("%d replies still under way after %g s; switching anyway",
                                self._busy, self._spec.switch_wait_seconds)
                finally:
                    self.state.waiting_for_replies = 0
            try:
                seconds = await self._replace(label, why)
                self._busy += enter
                return seconds
            finally:
                if self.state.state in ("switching", "loading"):  # refused before unloading
                    self.state.state = "resident" if self.state.resident else "not loaded"
                async with self._cond:
                    self._switching = False
                    self._cond.notify_all()

    async def _replace(self, label: str, why: str) -> float:
        previous = self.state.resident
        if previous != label:
            await self.check_memory(label, previous)
        if previous is not None and previous != label:
            await self._unload(previous)
        try:
            seconds = await self._load(label)
        except ProviderError as exc:
            self.state.state, self.state.last_error = "failed", str(exc)
            log.warning("loading %s failed: %s", label, exc)
            if previous is not None and previous != label:
                await self._restore(previous)
            raise
        self.state.resident, self.state.state, self.state.last_error = label, "resident", None
        self.state.cold_start_seconds, self.state.loaded_at = seconds, datetime.now(UTC)
        if previous is not None and previous != label:
            self.state.switches += 1
        log.info("model %s loaded and warm in %.2f s (%s)", label, seconds, why)
        return seconds

    async def _restore(self, previous: str) -> None:
        try:
            seconds = await self._load(previous)
        except ProviderError as exc:
            log.error("loading %s again failed too: %s", previous, exc)
            return
        self.state.resident, self.state.state = previous, "resident"
        self.state.cold_start_seconds, self.state.loaded_at = seconds, datetime.now(UTC)
        log.info("%s is loaded again", previous)

    async def _load(self, label: str) -> float:
        provider_name, _, model = self._resolve(label)
        provider, _ = self.backend(label)
        started = time.perf_counter()
        server = self._server(provider_name)
        if server is not None:
            await server.start({"model": model.id, "path": model.path or ""})
        await provider.warm(model)
        return time.perf_counter() - started

    async def _unload(self, label: str) -> None:
        """Release a model: the backend frees it, a managed server is stopped."""
        provider_name, _, model = self._resolve(label)
        provider, _ = self.backend(label)
        log.info("unloading %s", label)
        try:
            await provider.unload(model)
        except ProviderError as exc:  # a backend that is gone holds nothing
            log.warning("unloading %s failed: %s", label, exc)
        server = self._servers.get(provider_name)
        if server is not None:
            await server.stop()
        self.state.resident, self.state.state = None, "not loaded"

    # --- turns ----------------------------------------------------------------------------

    async def _enter(self, want: Callable[[], str], named: bool) -> str:
        """Wait for a place on the model `want()` names; the label of the model it runs on.

        While a switch is under way the turn waits; when the model it needs is not the
        resident one (its persona names another, a fallback stands in, or nothing is
        loaded), it switches to it."""
        while True:
            async with self._cond:
                await self._cond.wait_for(lambda: not self._switching)
                label = want()
                if label == self.state.resident and self.state.state == "resident":
                    self._busy += 1
                    return label
            if self.state.resident is None:
                log.info("a turn needs %s, which is not loaded; loading it", label)
            else:
                log.info("a turn needs %s%s while %s is loaded; it waits for the switch", label,
                         " (named by its persona)" if named else "", self.state.resident)
            await self._switch_to(want, why="a turn needed it", enter=True)
            async with self._cond:
                if self.state.resident == want():
                    return self.state.resident
                self._busy -= 1  # another switch came first; wait for the model again
                self._cond.notify_all()

    # --- fallback -------------------------------------------------------------------------

    async def _worth_trying(self, label: str, primary: str) -> bool:
        """Whether a turn should ask `label` now. A model that failed is asked again only
        once `residency.fallback_probe_seconds` have passed since it was last tried, and then
        only if it answers a ping (quick: a refused connection fails at once); a fallback
        must answer a ping before a turn waits for it to load."""
        down = self._down.get(label)
        if down is None and label == primary:
            return True
        if down is not None:
            if time.monotonic() - down.probed < self._spec.fallback_probe_seconds:
                return False
            down.probed = time.monotonic()
        _, spec, _ = self._resolve(label)
        if spec.managed is not None:
            return True  # a stopped managed server answers nothing; loading it starts it
        provider, _ = self.backend(label)
        try:
            await provider.ping()
        except ProviderError as exc:
            log.info("%s does not answer yet: %s", label, exc)
            if down is not None:
                down.error = str(exc)
            return False
        return True

    def _failed(self, label: str, exc: ProviderError) -> None:
        down = self._down.get(label)
        if down is None:
            self._down[label] = DownModel(label, datetime.now(UTC), str(exc),
                                          probed=time.monotonic())
            log.warning("model %s is down: %s", label, exc)
        else:
            down.error, down.probed = str(exc), time.monotonic()

    def _recovered(self, label: str) -> None:
        """`label` answered a request: if it was down, say once that it is back."""
        down = self._down.pop(label, None)
        if down is not None:
            log.warning("model %s answers again (down since %s; %d requests answered by %s "
                        "meanwhile)", label, f"{down.since:%H:%M:%S} UTC", down.requests,
                        down.answered_by or "no fallback")

    def _stood_in(self, primary: str, label: str) -> None:
        """A request meant for `primary` was answered by the fallback `label`: logged as a
        warning once per outage and fallback, then as information."""
        self._down.pop(label, None)  # the fallback itself is up
        down = self._down.get(primary)
        if down is None:  # cleared meanwhile by a request that found it up again
            down = self._down[primary] = DownModel(primary, datetime.now(UTC), "unknown",
                                                   probed=time.monotonic())
        if down.answered_by != label:
            log.warning("model %s is down; answered by %s instead", primary, label)
        else:
            log.info("model %s is still down; answered by %s instead", primary, label)
        down.answered_by = label
        down.requests += 1

    async def _managed_ready(self, label: str) -> None:
        provider_name, spec, _ = self._resolve(label)
        server = self._servers.get(provider_name)
        if server is not None and spec.managed is not None:
            await server.ready(spec.managed.start_timeout)

    async def _managed_recovered(self, label: str) -> bool:
        """After a failed request: whether the label's managed server answers again (it was
        restarted); False when there is none."""
        provider_name, spec, _ = self._resolve(label)
        server = self._servers.get(provider_name)
        if server is None or spec.managed is None:
            return False
        log.info("%s did not answer; waiting for its managed server", label)
        return await server.healthy(spec.managed.start_timeout)

    async def _leave(self) -> None:
        async with self._cond:
            self._busy -= 1
            if self.state.waiting_for_replies:
                self.state.waiting_for_replies = self._busy
            self._cond.notify_all()

    # --- keeping warm ---------------------------------------------------------------------

    async def keep_warm(self) -> None:
        """One check: the active model is resident and still loaded; if the backend evicted
        it anyway (Ollama under memory pressure), or it never loaded, load it again."""
        if self._switching or self._switch_lock.locked():
            return
        label = self.state.active
        was_down = label in self._down
        if was_down and not await self._worth_trying(label, label):
            return  # a fallback stands in for it; it is asked again now and then
        if self.state.resident != label:
            log.info("%s is not loaded; loading it", label)
            await self._switch_to(lambda: self.state.active, why="keep warm")
            if was_down and self.state.resident == label and (
                    self._down.pop(label, None) is not None):
                log.warning("model %s answers again and is loaded; turns go to it", label)
            return
        provider, model = self.backend(label)
        loaded = await provider.loaded_models()
        if loaded is None or any(_same(name, model.id) for name in loaded):
            return
        log.warning("%s was unloaded by its backend; warming it again", label)
        self.state.rewarms += 1
        await self._switch_to(lambda: self.state.active, why="evicted", rewarm=True)

    # --- memory ---------------------------------------------------------------------------

    async def memory_need(self, label: str) -> MemoryNeed | None:
        """The estimate for a model on this machine; None when its size cannot be known or
        it runs on another machine."""
        provider_name, spec, model = self._resolve(label)
        if spec.type != "embedded" and not is_local_url(spec.base_url):
            return None
        path = weights_file(spec, model)
        if path is not None:
            size = weights_bytes(path)
            if size:
                return MemoryNeed(size, model.context_window, str(path))
        if spec.type == "ollama":
            provider, _ = self.backend(label)
            try:
                size = await provider.model_size(model)
            except ProviderError as exc:
                log.info("cannot tell the size of %s: %s", label, exc)
                return None
            if size:
                return MemoryNeed(size, model.context_window, f"{provider_name} reports")
        return None

    async def check_memory(self, label: str, freed_label: str | None) -> None:
        if not self._spec.memory_check:
            return
        need = await self.memory_need(label)
        available = self._available_memory()
        if need is None or available is None:
            log.info("no memory check for %s: %s", label,
                     "its size is unknown" if need is None else "free memory is unknown")
            return
        freed = await self.memory_need(freed_label) if freed_label else None
        self.state.memory_needed_gb = need.peak_gb
        self.state.memory_available_gb = available / 1e9
        check_fits(label, need, available, freed, freed_label or "")

    # --- status and shutdown --------------------------------------------------------------

    def status(self) -> Residency:
        self.state.managed = [server.status() for server in self._servers.values()]
        self.state.down = list(self._down.values())
        return self.state

    async def close(self) -> None:
        for server in self._servers.values():
            await server.stop()
        for provider in self._providers.values():
            await provider.close()
        self._providers.clear()


def weights_file(spec: ProviderSpec, model: ModelSpec) -> Path | None:
    """The weights on disk: an embedded model's file or folder (the bundled one by default),
    a managed model's `path`, or a weights file named in its server's command."""
    if spec.type == "embedded":
        from bot.providers.embedded import weights_path

        try:
            return weights_path(model)
        except ModelNotFound:
            return None
    if model.path:
        return Path(model.path).expanduser()
    if spec.managed is not None:
        for part in spec.managed.command:
            candidate = Path(part.replace("{model}", model.id)).expanduser()
            if candidate.suffix in (".gguf", ".safetensors") and candidate.is_file():
                return candidate
    return None


def _fixed(label: str) -> Callable[[], str]:
    return lambda: label


def _same(reported: str, configured: str) -> bool:
    def tagged(name: str) -> str:
        return name if ":" in name else f"{name}:latest"

    return tagged(reported) == tagged(configured)
