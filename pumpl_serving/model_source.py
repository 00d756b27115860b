"""Where the served model comes from, and how a running worker swaps to a new one.

* :class:`PathSource` — an explicit folder (``--model-path``); never changes.
* :class:`RegistrySource` — the version behind ``models:/pumpl-<partition>@<alias>`` in the
  MLflow registry (``pumpl_assets.core.registry``). The AWQ engine serves the version's AWQ
  model, every other engine its merged model — the version's OWN copies, downloaded from its
  MLflow run (``Registry.download_model``: a local cache keyed by version + sha256, checked
  before serving), so the server needs only the tracking URI, never the Dagster data root, and
  a re-run of the pipeline cannot change what a version serves. A hash mismatch, a missing
  alias or an unreachable tracking server is a :class:`ModelSourceError` naming the version.
* :class:`EngineSlot` — the engine that currently answers. Requests take a *lease* on it;
  :meth:`EngineSlot.swap` installs a fully loaded new engine atomically and the old one is
  closed when its last lease ends, so requests in flight finish on the engine they started on.
* :class:`RegistryPoller` — a daemon thread that re-resolves the source every N seconds and,
  when the answer changed, loads the new engine *before* swapping it in. A failed resolve or
  load keeps the current engine serving (and is retried at the next poll).

Assumption: resolving the registry is cheap (one sqlite/HTTP round trip), loading an engine
is not (seconds); both happen off the request path.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pumpl_assets.core import artifacts

log = logging.getLogger("pumpl_serving")


class ModelSourceError(RuntimeError):
    """The model to serve cannot be found; the message says what to do."""


@dataclass(frozen=True)
class ModelRef:
    """One servable model: what it is called and which folder holds its weights."""

    name: str
    path: Path
    version: str | None = None
    alias: str | None = None
    source: str = "path"  # "path" | "registry"
    sha256: str | None = None  # the served folder's sha256 (registry versions)
    catalogue: Path | None = None  # the version's exercise catalogue (exercises.parquet), if registered

    @property
    def key(self) -> tuple[str, str | None, str]:
        """Identity for change detection (a moved alias changes version and usually path)."""
        return (self.name, self.version, str(self.path))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "alias": self.alias, "source": self.source}


class ModelSource(Protocol):
    def resolve(self) -> ModelRef: ...

    def describe(self) -> str: ...


_REGISTRIES: dict[str, Any] = {}


def registered_model_name(partition: str) -> str:
    return f"pumpl-{partition}"


@dataclass(frozen=True)
class PathSource:
    """A fixed model folder (``--model-path``)."""

    path: Path
    name: str | None = None

    def resolve(self) -> ModelRef:
        p = Path(self.path).expanduser().resolve()
        # A .gguf file (engine llamacpp) lives in its export folder, next to the HF tokenizer and config.
        folder = p.parent if p.suffix == ".gguf" and p.is_file() else p
        if not (folder / artifacts.FILE_MODEL_CONFIG).is_file():
            raise ModelSourceError(
                f"--model-path {p} is not a Hugging Face model folder (no config.json); "
                "point it at a merged, AWQ or GGUF-export model folder"
            )
        return ModelRef(name=self.name or folder.name, path=p, version=None, alias=None, source="path")

    def describe(self) -> str:
        return f"path {self.path}"


# Which of a registered version's copies an engine loads (core/registry.py MODEL_KINDS).
ENGINE_MODEL_KIND = {"awq": "awq", "llamacpp": "gguf"}


@dataclass(frozen=True)
class RegistrySource:
    """The version behind ``models:/pumpl-<partition>@<alias>``, served from its own files.

    ``engine == "awq"`` serves the version's AWQ model, ``"llamacpp"`` its GGUF folder (the quant
    its export record names as default); every other engine its merged model.
    Files are downloaded into ``cache_dir`` (default ``PUMPL_MODEL_CACHE`` or
    ``<data root>/cache/models``) under ``<name>/v<version>-<sha256[:16]>/<kind>``. Raises
    :class:`ModelSourceError` (naming the fix) when the server is unreachable, the alias points
    nowhere, the version lacks that model, or its files do not hash to the registered sha256.
    """

    partition: str
    alias: str = "champion"
    engine: str = "transformers"
    tracking_uri: str | None = None
    cache_dir: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{registered_model_name(self.partition)}@{self.alias}"

    @property
    def kind(self) -> str:
        return ENGINE_MODEL_KIND.get(self.engine, "merged")

    def describe(self) -> str:
        return self.uri

    def _registry(self) -> Any:
        from pumpl_assets.core import registry as reg_mod
        from pumpl_assets.core import settings

        uri = self.tracking_uri or settings.mlflow_tracking_uri()
        reg = _REGISTRIES.get(uri)
        if reg is None:  # one client per store and process (creating one checks the DB schema)
            reg = _REGISTRIES[uri] = reg_mod.Registry(uri)
        return reg

    def resolve(self) -> ModelRef:
        from pumpl_assets.core.registry import RegistryError

        try:
            reg = self._registry()
            reg.check_reachable()  # fail fast and clearly (MLflow's own HTTP retries take minutes)
            info = reg.get_champion(self.partition) if self.alias == "champion" else reg.resolve(self.uri)
        except RegistryError as exc:
            raise ModelSourceError(f"no model answers to {self.uri}: {exc}") from None
        except Exception as exc:  # registry missing, store unreadable
            raise ModelSourceError(
                f"no model answers to {self.uri} ({type(exc).__name__}); register and promote a model "
                f"(materialize the pipeline for partition {self.partition!r}) or pass --model-path"
            ) from None
        if info is None:
            raise ModelSourceError(
                f"no model answers to {self.uri}: the registry has no {self.alias!r} alias for "
                f"{registered_model_name(self.partition)}; materialize the pipeline for partition "
                f"{self.partition!r} (it registers and promotes a champion) or pass --model-path"
            )
        try:
            path = reg.download_model(info, self.kind, self.cache_dir)
            catalogue = None
            if artifacts.RUN_CATALOGUE in info.sha256:
                cat_dir = reg.download_model(info, artifacts.RUN_CATALOGUE, self.cache_dir)
                catalogue = (
                    cat_dir / artifacts.FILE_EXERCISES
                    if (cat_dir / artifacts.FILE_EXERCISES).is_file()
                    else None
                )
        except RegistryError as exc:
            hint = " (use --engine transformers: the merged model)" if self.kind != "merged" else ""
            raise ModelSourceError(f"{self.uri} → {exc}{hint}") from None
        if not (path / artifacts.FILE_MODEL_CONFIG).is_file():
            raise ModelSourceError(
                f"{self.uri} (version {info.version}): its {self.kind} files hold no config.json; "
                "it is not a model folder"
            )
        return ModelRef(
            name=registered_model_name(self.partition),
            path=path.resolve(),
            version=str(info.version),
            alias=self.alias,
            source="registry",
            sha256=info.sha256.get(self.kind),
            catalogue=catalogue,
        )


# ------------------------------------------------------------------------------------------
# Hot swap
# ------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """An engine together with the model it serves."""

    ref: ModelRef
    engine: Any
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    users: int = 0
    retired: bool = False


class EngineSlot:
    """The engine that answers now; swapped atomically, closed when its last user is done."""

    def __init__(self, loaded: Loaded):
        self._lock = threading.Lock()
        self._current = loaded
        self.swaps = 0

    @property
    def current(self) -> Loaded:
        return self._current

    @contextlib.contextmanager
    def lease(self) -> Iterator[Loaded]:
        """Use the current engine for one unit of work; a concurrent swap does not affect it."""
        with self._lock:
            loaded = self._current
            loaded.users += 1
        try:
            yield loaded
        finally:
            with self._lock:
                loaded.users -= 1
                close_now = loaded.retired and loaded.users == 0
            if close_now:
                _close(loaded)

    def swap(self, new: Loaded) -> Loaded:
        """Install ``new`` (already loaded); the old engine closes once no request uses it."""
        with self._lock:
            old = self._current
            self._current = new
            old.retired = True
            self.swaps += 1
            close_now = old.users == 0
        if close_now:
            _close(old)
        return old


def _close(loaded: Loaded) -> None:
    try:
        loaded.engine.close()
    except Exception:  # pragma: no cover - best effort
        log.exception("closing the engine of %s failed", loaded.ref.describe())


class RegistryPoller(threading.Thread):
    """Re-resolve ``source`` every ``interval`` s; load and swap in a changed model."""

    def __init__(
        self,
        source: ModelSource,
        slot: EngineSlot,
        load: Callable[[ModelRef], Any],
        interval: float,
        on_change: Callable[[Loaded], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ):
        super().__init__(name="pumpl-registry-poller", daemon=True)
        self.source = source
        self.slot = slot
        self.load = load
        self.interval = interval
        self.on_change = on_change
        self.on_error = on_error
        self.stop_event = threading.Event()

    def poll_once(self) -> bool:
        """One poll; True when a new model was swapped in."""
        try:
            ref = self.source.resolve()
        except Exception as exc:
            self._report(f"registry poll failed, still serving {self.slot.current.ref.version}: {exc}")
            return False
        if ref.key == self.slot.current.ref.key:
            return False
        log.info("%s moved to version %s; loading it", self.source.describe(), ref.version)
        t0 = time.perf_counter()
        try:
            engine = self.load(ref)
        except Exception as exc:
            self._report(
                f"loading version {ref.version} from {ref.path} failed, still serving the old one: {exc}"
            )
            return False
        new = Loaded(ref=ref, engine=engine, load_seconds=time.perf_counter() - t0)
        old = self.slot.swap(new)
        log.info("now serving version %s (was %s)", ref.version, old.ref.version)
        if self.on_change:
            self.on_change(new)
        return True

    def _report(self, msg: str) -> None:
        log.warning(msg)
        if self.on_error:
            self.on_error(msg)

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.poll_once()
            except Exception:  # pragma: no cover - never let the poller die
                log.exception("registry poller error")

    def stop(self) -> None:
        self.stop_event.set()
