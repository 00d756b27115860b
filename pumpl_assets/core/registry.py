"""MLflow tracking + model registry (sqlite-backed, local artifacts, no network).

One registered model per partition (``pumpl-<partition>``). Each fine-tune that reaches the
registry becomes a version; the serving model is the version holding the ``champion`` alias,
which moves only through :meth:`Registry.set_champion` (the Dagster asset calls it once every
gate has passed).

Model source: when ``register_version`` gets a ``run_id`` and ``copy=True`` (default), the
quantized folder is copied into that run's artifact store (``<artifact root>/<experiment
id>/<run id>/artifacts/awq_model``) and the version's source is that ``runs:/`` URI; the
``awq_path`` tag points at the *copy*, so a later re-materialisation of the partition's
artifact folder can never change what an existing version (or the champion) serves. Without a
run (or with ``copy=False``) the version is registered by the folder's absolute path.

Version tags: whatever the caller passes (dagster run id, data hashes, ``merged_path``...)
plus ``awq_path`` and ``awq_source_path``. Metrics are stored as tags prefixed ``metric.``
(see :func:`metric_tags`) and parsed back into :attr:`ChampionInfo.metrics`.

MLflow's telemetry is disabled (``MLFLOW_DISABLE_TELEMETRY``) before mlflow is imported;
sqlite + file artifact stores need no network. The first use of a fresh sqlite file runs
MLflow's alembic migrations (a few seconds).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from pumpl_assets.core import settings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

CHAMPION_ALIAS = "champion"
METRIC_PREFIX = "metric."
MODEL_ARTIFACT_PATH = "awq_model"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>\d+|latest))$")


class RegistryError(LookupError):
    """A registered model, version or alias does not exist (the message names it)."""


def registered_model_name(partition: str) -> str:
    return f"pumpl-{partition}"


def metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    """``{"schema_valid": 0.97}`` → ``{"metric.schema_valid": "0.97"}`` (version tags hold strings)."""
    return {f"{METRIC_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()}


@dataclass
class ChampionInfo:
    """A registered version as serving/evaluation need it."""

    name: str
    version: str
    source: str
    run_id: str | None
    tags: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    awq_path: Path | None = None
    merged_path: Path | None = None
    aliases: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def is_champion(self) -> bool:
        return CHAMPION_ALIAS in self.aliases


def _file_uri_to_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


def _parse_metrics(tags: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in tags.items():
        if k.startswith(METRIC_PREFIX):
            try:
                out[k[len(METRIC_PREFIX) :]] = float(v)
            except ValueError:
                continue  # a non-numeric metric tag is kept in .tags, just not parsed
    return out


class Registry:
    """Thin, explicit wrapper over ``MlflowClient`` (no fluent/global run state)."""

    def __init__(self, tracking_uri: str | None = None, artifact_root: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri or settings.mlflow_tracking_uri()
        self.artifact_root = Path(artifact_root or settings.mlflow_artifact_root()).expanduser().resolve()
        self.client: MlflowClient = MlflowClient(
            tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
        )
        self._active_run: str | None = None

    # ---- tracking ---------------------------------------------------------------------------
    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        location = (self.artifact_root / name).as_uri()
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

    def register_version(
        self,
        partition: str,
        model_dir: Path,
        *,
        run_id: str | None,
        tags: dict[str, str],
        description: str = "",
        copy: bool = True,
    ) -> str:
        """Register ``model_dir`` (the AWQ folder) as a new version of ``pumpl-<partition>``; return it.

        See the module docstring for where the source points. Tag ``merged_path`` is expected
        from the caller (the fp32 merged folder); ``awq_path`` is set here.
        """
        model_dir = Path(model_dir).resolve()
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json)")
        name = registered_model_name(partition)
        self._ensure_registered_model(name)
        all_tags = {k: str(v) for k, v in tags.items()}
        all_tags["awq_source_path"] = str(model_dir)
        all_tags["partition"] = partition
        if run_id and copy:
            self.client.log_artifacts(run_id, str(model_dir), artifact_path=MODEL_ARTIFACT_PATH)
            artifact_uri = f"{self.client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
            local = _file_uri_to_path(artifact_uri)
            all_tags["awq_path"] = str(local) if local else artifact_uri
            source = f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}"
        else:
            all_tags["awq_path"] = str(model_dir)
            source = str(model_dir)
        mv = self.client.create_model_version(
            name, source=source, run_id=run_id, tags=all_tags, description=description, await_creation_for=0
        )
        return str(mv.version)

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
        except MlflowException:
            return None
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
        awq = tags.get("awq_path")
        merged = tags.get("merged_path")
        return ChampionInfo(
            name=str(mv.name),
            version=str(mv.version),
            source=str(mv.source),
            run_id=mv.run_id or None,
            tags=tags,
            metrics=_parse_metrics(tags),
            awq_path=Path(awq) if awq else None,
            merged_path=Path(merged) if merged else None,
            aliases=list(mv.aliases or []),
            description=mv.description or "",
        )
