"""MLflow tracking + model registry: a local sqlite store, or a tracking server.

One registered model per partition (``pumpl-<partition>``). Each fine-tune that reaches the
registry becomes a version; the serving model is the version holding the ``champion`` alias,
which moves only through :meth:`Registry.set_champion` (the Dagster asset calls it once every
gate has passed).

Stores. ``MLFLOW_TRACKING_URI`` (or the ``tracking_uri`` argument) picks the store:

* local (``sqlite:///…``, a folder, ``file:``, or a database URI used directly): experiments get
  a ``file://`` artifact location under ``<data root>/mlflow/artifacts`` (no server, no network);
* remote (``http(s)://`` — ``mlflow server --serve-artifacts``, e.g. on PostgreSQL with an S3
  artifact store): no artifact location is ever set by the client, so artifacts go where the
  *server* puts them (``mlflow-artifacts:/`` → its ``--artifacts-destination``) and never land
  on the client's disk.

An immutable version. :meth:`Registry.register_model` copies every servable format into the
version's own run — ``runs:/<run>/merged`` (full precision), ``runs:/<run>/awq`` (AWQ W4A16) and
``runs:/<run>/gguf`` (llama.cpp quants, when the pipeline exported them),
plus the exercise catalogue under ``catalogue/`` (names: ``core/artifacts.py`` ``RUN_*``) — and
tags the version with each copy's ``sha256.<kind>`` (a :func:`~pumpl_assets.core.io.sha256_tree`
of the folder) and ``artifact.<kind>`` (its path in the run). Serving materialises a version with
:meth:`Registry.download_model` — a local cache keyed by version + hash, hash-checked, atomic —
so a later re-run of the pipeline (which rewrites the Dagster data root) can never change what
an existing version, or the champion, serves, and a server needs nothing but the tracking URI.
``register_version(partition, model_dir, run_id=None, copy=False)`` registers a folder by path
(development only; its hash is still recorded, so a changed folder is refused at serve time).

Version tags: whatever the caller passes (dagster run id, data hashes, gates…) plus
``partition``, ``sha256.<kind>``, ``artifact.<kind>``, ``source_path.<kind>`` (where the copy
came from — provenance only, never read to serve). Metrics are stored as tags prefixed
``metric.`` (see :func:`metric_tags`) and parsed back into :attr:`ChampionInfo.metrics`.

Secrets: a ``user:password@`` in the tracking URI is removed from every message
(:func:`~pumpl_assets.core.artifacts.redact`); MLflow reads tokens from its own env variables.

MLflow's telemetry is disabled (``MLFLOW_DISABLE_TELEMETRY``) before mlflow is imported. The
first use of a fresh sqlite file runs MLflow's alembic migrations (a few seconds).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pumpl_assets.core import artifacts, settings
from pumpl_assets.core.io import atomic_path, sha256_tree

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in server logs

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

CHAMPION_ALIAS = "champion"
METRIC_PREFIX = "metric."
MODEL_KINDS = ("merged", "awq", "gguf")  # servable formats: full-precision merged, AWQ W4A16, GGUF
MODEL_ARTIFACT_PATH = artifacts.RUN_AWQ  # the version's ``source`` (``runs:/<run>/awq``)
SHA_TAG = "sha256.{kind}"
ARTIFACT_TAG = "artifact.{kind}"
SOURCE_PATH_TAG = "source_path.{kind}"
PATH_TAG = "path.{kind}"  # only on versions registered by folder path (copy=False, development)
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>\d+|latest))$")


class RegistryError(LookupError):
    """A registered model, version, alias or its files cannot be found or trusted (the message names it)."""


class IntegrityError(RegistryError):
    """A version's downloaded files do not hash to the sha256 recorded at registration."""


def registered_model_name(partition: str) -> str:
    return f"pumpl-{partition}"


def metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    """``{"schema_valid": 0.97}`` → ``{"metric.schema_valid": "0.97"}`` (version tags hold strings)."""
    return {f"{METRIC_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()}


def is_remote_store(tracking_uri: str) -> bool:
    """True for a tracking server (``http(s)://``, ``databricks``): the client never sets an artifact location.

    Database URIs used directly (``sqlite:``, ``postgresql+psycopg2:``…) and folders are local
    stores: their experiments get a ``file://`` location under ``<data root>/mlflow/artifacts``.
    """
    scheme = urlparse(tracking_uri).scheme
    return scheme in ("http", "https") or scheme.startswith("databricks")


def model_cache_dir() -> Path:
    """Where served versions are downloaded: ``PUMPL_MODEL_CACHE`` or ``<data root>/cache/models``."""
    value = os.environ.get("PUMPL_MODEL_CACHE")
    return Path(value).expanduser().resolve() if value else settings.cache_dir() / "models"


@dataclass
class ChampionInfo:
    """A registered version as serving/evaluation need it.

    ``sha256``/``artifacts`` map each servable kind (``merged``, ``awq``) to its folder hash and its
    path inside the version's run; a folder registered by path (development) is in ``paths``.
    """

    name: str
    version: str
    source: str
    run_id: str | None
    tags: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def is_champion(self) -> bool:
        return CHAMPION_ALIAS in self.aliases

    @property
    def kinds(self) -> list[str]:
        """The model formats this version can serve."""
        return [k for k in (*MODEL_KINDS, artifacts.RUN_CATALOGUE) if k in self.sha256]


def _parse_metrics(tags: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in tags.items():
        if k.startswith(METRIC_PREFIX):
            try:
                out[k[len(METRIC_PREFIX) :]] = float(v)
            except ValueError:
                continue  # a non-numeric metric tag is kept in .tags, just not parsed
    return out


_VERIFIED: set[tuple[str, str]] = set()  # (cache folder, sha256) checked by this process
_VERIFY_LOCK = threading.Lock()


class Registry:
    """Thin, explicit wrapper over ``MlflowClient`` (no fluent/global run state)."""

    def __init__(self, tracking_uri: str | None = None, artifact_root: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri or settings.mlflow_tracking_uri()
        self.remote = is_remote_store(self.tracking_uri)
        # Local stores only: a remote server decides where artifacts live (never the client's disk).
        self.artifact_root: Path | None = (
            None
            if self.remote
            else Path(artifact_root or settings.mlflow_artifact_root()).expanduser().resolve()
        )
        self.client: MlflowClient = MlflowClient(
            tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
        )
        self._active_run: str | None = None

    @property
    def display_uri(self) -> str:
        """The tracking URI without credentials (safe for logs, metadata and errors)."""
        return artifacts.redact(self.tracking_uri)

    def check_reachable(self, timeout: float = 5.0) -> None:
        """Raise :class:`RegistryError` naming the server when a remote tracking server does not answer."""
        if not self.remote or not self.tracking_uri.startswith(("http://", "https://")):
            return
        import urllib.request

        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                if r.status == 200:
                    return
                problem = f"HTTP {r.status}"
        except Exception as exc:
            problem = type(exc).__name__ + (f": {exc.reason}" if hasattr(exc, "reason") else "")
        raise RegistryError(
            f"MLflow tracking server {self.display_uri} is unreachable ({problem}); "
            "start it or fix MLFLOW_TRACKING_URI"
        )

    # ---- tracking ---------------------------------------------------------------------------
    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        location = None if self.artifact_root is None else (self.artifact_root / name).as_uri()
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except Exception:  # created concurrently by another process
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return str(exp.experiment_id)

    @contextlib.contextmanager
    def start_run(self, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> Iterator[str]:
        """Open a run (yields its id); FINISHED on exit, FAILED if the block raises."""
        run = self.client.create_run(
            self._experiment_id(experiment), run_name=run_name, tags=dict(tags or {})
        )
        run_id = str(run.info.run_id)
        previous, self._active_run = self._active_run, run_id
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        finally:
            self._active_run = previous
            self.client.set_terminated(run_id, status=status)

    def _run(self, run_id: str | None) -> str:
        rid = run_id or self._active_run
        if rid is None:
            raise RuntimeError("no run: pass run_id or call inside `with registry.start_run(...)`")
        return rid

    def log_metrics(self, metrics: dict[str, float], *, run_id: str | None = None, step: int = 0) -> None:
        """Log finite numeric metrics (NaN/Inf are skipped: MLflow stores them badly)."""
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items() if math.isfinite(float(v))]
        if batch:
            self.client.log_batch(self._run(run_id), metrics=batch)

    def log_params(self, params: dict[str, Any], *, run_id: str | None = None) -> None:
        from mlflow.entities import Param

        batch = [Param(k, str(v)[:6000]) for k, v in params.items()]
        if batch:
            self.client.log_batch(self._run(run_id), params=batch)

    def log_artifact(
        self, path: Path | str, *, run_id: str | None = None, artifact_path: str | None = None
    ) -> None:
        """Copy a file or a whole folder into the run's artifact store."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self._run(run_id), str(path), artifact_path=artifact_path)
        elif path.is_file():
            self.client.log_artifact(self._run(run_id), str(path), artifact_path=artifact_path)
        else:
            raise FileNotFoundError(f"artifact {path} does not exist")

    # ---- registry ---------------------------------------------------------------------------
    def _ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(name, description="Pumpl workout-plan model (AWQ 4-bit)")
            except MlflowException:
                self.client.get_registered_model(name)  # created concurrently; re-raise if truly absent

    def register_model(
        self,
        partition: str,
        *,
        run_id: str,
        merged_dir: Path | str | None,
        awq_dir: Path | str | None,
        tags: dict[str, str],
        catalogue: Path | str | None = None,
        description: str = "",
        gguf_dir: Path | str | None = None,
    ) -> str:
        """Copy each model folder (and the catalogue file) into run ``run_id``; register a version.

        The version's files are its own: ``runs:/<run>/merged``, ``runs:/<run>/awq`` and
        ``runs:/<run>/gguf`` with their ``sha256.<kind>`` tags (see the module docstring). At least
        the merged or the AWQ folder is needed. Returns the new version number (the alias is not moved).
        """
        folders = {"merged": merged_dir, "awq": awq_dir, "gguf": gguf_dir}
        if not (merged_dir or awq_dir):
            raise ValueError("register_model needs merged_dir and/or awq_dir")
        all_tags = {k: str(v) for k, v in tags.items()}
        for kind, folder in folders.items():
            if folder is None:
                continue
            folder = _model_folder(folder)
            all_tags[SHA_TAG.format(kind=kind)] = sha256_tree(folder)
            all_tags[ARTIFACT_TAG.format(kind=kind)] = artifacts.RUN_MODEL_DIRS[kind]
            all_tags[SOURCE_PATH_TAG.format(kind=kind)] = str(folder)
            self.client.log_artifacts(run_id, str(folder), artifact_path=artifacts.RUN_MODEL_DIRS[kind])
        if catalogue is not None:
            cat = Path(catalogue)
            if not cat.is_file():
                raise FileNotFoundError(f"catalogue {cat} does not exist")
            self.client.log_artifact(run_id, str(cat), artifact_path=artifacts.RUN_CATALOGUE)
            all_tags[SHA_TAG.format(kind=artifacts.RUN_CATALOGUE)] = _file_as_tree_hash(cat)
            all_tags[ARTIFACT_TAG.format(kind=artifacts.RUN_CATALOGUE)] = (
                f"{artifacts.RUN_CATALOGUE}/{cat.name}"
            )
        kind = "awq" if awq_dir is not None else "merged"
        return self._create_version(
            partition, f"runs:/{run_id}/{artifacts.RUN_MODEL_DIRS[kind]}", run_id, all_tags, description
        )

    def register_version(
        self,
        partition: str,
        model_dir: Path,
        *,
        run_id: str | None,
        tags: dict[str, str],
        description: str = "",
        copy: bool = True,
        merged_dir: Path | None = None,
    ) -> str:
        """Register ``model_dir`` (the AWQ folder; ``merged_dir`` optional) as a new version.

        With a run and ``copy=True`` this is :meth:`register_model` (the version gets its own
        copies). Otherwise (development) the folders are registered by path with their hashes:
        serving copies them into its cache and refuses them once they no longer hash the same.
        """
        if run_id and copy:
            return self.register_model(
                partition,
                run_id=run_id,
                merged_dir=merged_dir,
                awq_dir=model_dir,
                tags=tags,
                description=description,
            )
        all_tags = {k: str(v) for k, v in tags.items()}
        for kind, folder in {"awq": model_dir, "merged": merged_dir}.items():
            if folder is None:
                continue
            folder = _model_folder(folder)
            all_tags[SHA_TAG.format(kind=kind)] = sha256_tree(folder)
            all_tags[PATH_TAG.format(kind=kind)] = str(folder)
            all_tags[SOURCE_PATH_TAG.format(kind=kind)] = str(folder)
        return self._create_version(partition, str(_model_folder(model_dir)), run_id, all_tags, description)

    def _create_version(
        self, partition: str, source: str, run_id: str | None, tags: dict[str, str], description: str
    ) -> str:
        name = registered_model_name(partition)
        self._ensure_registered_model(name)
        tags = {**tags, "partition": partition}
        mv = self.client.create_model_version(
            name, source=source, run_id=run_id, tags=tags, description=description, await_creation_for=0
        )
        return str(mv.version)

    def download_model(self, info: ChampionInfo, kind: str, cache_dir: Path | str | None = None) -> Path:
        """A local folder holding exactly the files of ``info``'s ``kind`` (``merged``/``awq``/``catalogue``).

        Downloaded once into ``<cache>/<name>/v<version>-<sha256[:16]>/<kind>`` (atomically: a
        temp folder renamed into place) and checked against the version's ``sha256.<kind>`` tag
        — once per process and cache folder. Raises :class:`RegistryError` (no such copy) or
        :class:`IntegrityError` (hash mismatch: refuse to serve), both naming the version.
        """
        label = f"{info.name} version {info.version}"
        digest = info.sha256.get(kind)
        if not digest:
            raise RegistryError(
                f"{label} carries no {kind} model (no {SHA_TAG.format(kind=kind)} tag; it has "
                f"{info.kinds or 'none'}); register it again with the current pipeline"
            )
        root = Path(cache_dir) if cache_dir else model_cache_dir()
        dest = root / info.name / f"v{info.version}-{digest[:16]}" / kind
        if not dest.exists():
            with atomic_path(dest) as tmp:
                self._fetch(info, kind, tmp, label)
                got = sha256_tree(tmp)
                if got != digest:
                    raise IntegrityError(
                        f"{label}: downloaded {kind} files hash to {got[:16]}…, the registry recorded "
                        f"{digest[:16]}…; refusing to serve it"
                    )
            with _VERIFY_LOCK:
                _VERIFIED.add((str(dest), digest))
            prune_model_cache(root / info.name, keep=dest.parent)
            return dest
        with _VERIFY_LOCK:
            known = (str(dest), digest) in _VERIFIED
        if not known:
            got = sha256_tree(dest)
            if got != digest:
                raise IntegrityError(
                    f"{label}: cached {kind} files at {dest} hash to {got[:16]}…, the registry recorded "
                    f"{digest[:16]}…; refusing to serve it (delete that folder to download it again)"
                )
            with _VERIFY_LOCK:
                _VERIFIED.add((str(dest), digest))
        return dest

    def _fetch(self, info: ChampionInfo, kind: str, tmp: Path, label: str) -> None:
        art = info.artifacts.get(kind)
        if info.run_id and art:
            import mlflow.artifacts

            with tempfile.TemporaryDirectory(dir=tmp.parent) as staging:
                try:
                    got = mlflow.artifacts.download_artifacts(
                        run_id=info.run_id,
                        artifact_path=art,
                        dst_path=staging,
                        tracking_uri=self.tracking_uri,
                    )
                except Exception as exc:
                    raise RegistryError(
                        f"{label}: cannot download its {kind} files (runs:/{info.run_id}/{art}) from "
                        f"{self.display_uri}: {type(exc).__name__}"
                    ) from None
                src = Path(got)
                if src.is_file():  # a single file (the catalogue): keep it in a folder of its own
                    tmp.mkdir()
                    shutil.move(str(src), tmp / src.name)
                else:
                    shutil.move(str(src), tmp)
            return
        path = info.paths.get(kind)
        if path is None:
            raise RegistryError(f"{label} names no run artifact or folder for its {kind} model")
        if not path.is_dir():
            raise RegistryError(f"{label} was registered from the folder {path}, which does not exist here")
        shutil.copytree(path, tmp)

    def set_champion(self, partition: str, version: str) -> None:
        """Point the ``champion`` alias at ``version`` (must exist)."""
        name = registered_model_name(partition)
        self._get_version(name, str(version))
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))

    def get_champion(self, partition: str) -> ChampionInfo | None:
        """The champion of ``partition``, or None when nothing is registered / no champion yet."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(registered_model_name(partition), CHAMPION_ALIAS)
        except MlflowException as exc:
            if _is_not_found(exc):
                return None
            raise RegistryError(
                f"cannot read the champion of {registered_model_name(partition)} from {self.display_uri}: "
                f"{exc.error_code}"
            ) from None
        return self._info(mv)

    def get_version(self, partition: str, version: str) -> ChampionInfo:
        return self._info(self._get_version(registered_model_name(partition), str(version)))

    def list_versions(self, partition: str) -> list[ChampionInfo]:
        """All versions of a partition, oldest first (empty when none)."""
        name = registered_model_name(partition)
        mvs = self.client.search_model_versions(f"name = '{name}'")
        return sorted((self._info(mv) for mv in mvs), key=lambda i: int(i.version))

    def resolve(self, uri: str) -> ChampionInfo:
        """``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``models:/<name>/latest``."""
        from mlflow.exceptions import MlflowException

        m = _URI.match(uri.strip())
        if not m:
            raise ValueError(f"{uri!r} is not a models:/<name>@<alias> or models:/<name>/<version> URI")
        name = m["name"]
        if m["alias"]:
            try:
                mv = self.client.get_model_version_by_alias(name, m["alias"])
            except MlflowException as exc:
                raise RegistryError(f"{uri}: no version of {name!r} has alias {m['alias']!r}") from exc
            return self._info(mv)
        if m["version"] == "latest":
            mvs = self.client.search_model_versions(f"name = '{name}'")
            if not mvs:
                raise RegistryError(f"{uri}: registered model {name!r} has no versions")
            return self._info(max(mvs, key=lambda v: int(v.version)))
        return self._info(self._get_version(name, m["version"]))

    # ---- helpers ----------------------------------------------------------------------------
    def _get_version(self, name: str, version: str) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, version)
        except MlflowException as exc:
            raise RegistryError(f"model version {name}/{version} does not exist") from exc

    def _info(self, mv: ModelVersion) -> ChampionInfo:
        tags = {str(k): str(v) for k, v in (mv.tags or {}).items()}

        def by_kind(fmt: str) -> dict[str, str]:
            prefix = fmt.format(kind="")
            return {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix) and v}

        return ChampionInfo(
            name=str(mv.name),
            version=str(mv.version),
            source=str(mv.source),
            run_id=mv.run_id or None,
            tags=tags,
            metrics=_parse_metrics(tags),
            sha256=by_kind(SHA_TAG),
            artifacts=by_kind(ARTIFACT_TAG),
            paths={k: Path(v) for k, v in by_kind(PATH_TAG).items()},
            aliases=list(mv.aliases or []),
            description=mv.description or "",
        )


def _file_as_tree_hash(path: Path) -> str:
    """:func:`sha256_tree` of a folder holding only ``path`` (how a single-file artifact is downloaded)."""
    import hashlib

    from pumpl_assets.core.io import sha256_file

    h = hashlib.sha256()
    h.update(path.name.encode())
    h.update(sha256_file(path).encode())
    return h.hexdigest()


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in (
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_PARAMETER_VALUE",
        "NOT_FOUND",
    )


def _model_folder(folder: Path | str) -> Path:
    path = Path(folder).resolve()
    if not (path / artifacts.FILE_MODEL_CONFIG).is_file():
        raise FileNotFoundError(f"{path} is not a model folder (no config.json)")
    return path


def prune_model_cache(model_cache: Path, keep: Path, keep_latest: int | None = None) -> list[Path]:
    """Delete a registered model's cached versions but ``keep`` and the newest others.

    At most ``keep_latest`` (default ``PUMPL_MODEL_CACHE_KEEP`` or 2) version folders stay, ``keep``
    included — so the version a server swaps away from stays on disk while its requests finish.
    Returns what was removed. (On Linux a loaded engine's memory-mapped files stay readable anyway.)
    """
    n = keep_latest if keep_latest is not None else int(os.environ.get("PUMPL_MODEL_CACHE_KEEP", "2"))
    if not model_cache.is_dir():
        return []
    others = sorted(
        (d for d in model_cache.iterdir() if d.is_dir() and d.name.startswith("v") and d != keep),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    removed = others[max(n - 1, 0) :]
    for d in removed:
        shutil.rmtree(d, ignore_errors=True)
    return removed


@dataclass
class Registration:
    """What :func:`register_candidate` did."""

    version: str
    run_id: str
    promoted: bool
    champion_version: str | None
    sha256: dict[str, str]


def register_candidate(
    registry: Registry,
    partition: str,
    *,
    merged_dir: Path,
    awq_dir: Path,
    gates: dict[str, bool],
    tags: dict[str, str],
    run_tags: dict[str, str] | None = None,
    catalogue: Path | None = None,
    promote: bool = True,
    description: str = "",
    gguf_dir: Path | None = None,
) -> Registration:
    """Register one pipeline result (model folders + catalogue) and crown it only if every gate passed.

    Opens an MLflow run ``registry_entry`` in experiment ``pumpl-<partition>`` (tagged with
    ``run_tags``, e.g. the Dagster run id), copies the folders into it (:meth:`Registry.register_model`),
    tags the version with ``gates_passed`` and ``gate.<name>``, and moves ``champion`` only when
    ``promote`` and ``gates`` is non-empty and all true. A failing gate still registers a version
    (for comparison), which never serves unless promoted by hand.
    """
    all_passed = bool(gates) and all(gates.values())
    version_tags = {
        **tags,
        "gates_passed": str(all_passed).lower(),
        **{f"gate.{k}": str(bool(v)).lower() for k, v in gates.items()},
    }
    cat = catalogue if catalogue is not None and Path(catalogue).is_file() else None
    with registry.start_run(registered_model_name(partition), "registry_entry", run_tags) as run_id:
        version = registry.register_model(
            partition,
            run_id=run_id,
            merged_dir=merged_dir,
            awq_dir=awq_dir,
            tags=version_tags,
            catalogue=cat,
            description=description,
            gguf_dir=gguf_dir,
        )
    promoted = bool(promote and all_passed)
    if promoted:
        registry.set_champion(partition, version)
    champion = registry.get_champion(partition)
    info = registry.get_version(partition, version)
    return Registration(
        version=version,
        run_id=run_id,
        promoted=promoted,
        champion_version=champion.version if champion else None,
        sha256=dict(info.sha256),
    )
