"""The artifact contract: every artifact's location and file name, named once.

Layout (identical to the historical ``settings.artifacts_dir`` layout when the root is local)::

    <root>/<partition>/<asset>/<name>

``<root>`` is ``PUMPL_ARTIFACT_ROOT`` when set — a local folder or an object-store URI
``s3://bucket/prefix`` — else ``<PUMPL_DATA_ROOT>/artifacts``. ``<asset>`` is one of the
``ASSET_*`` names, ``<name>`` one of the file/folder names below (``FILE_*`` / ``DIR_*``).

Usage (the same calls work on a local root and on ``s3://``)::

    from pumpl_assets.core import artifacts as A

    store = A.ArtifactStore.from_env()                     # or ArtifactStore("s3://bucket/prefix")
    store.write_parquet("smollm2-135m", A.ASSET_SPLIT, A.split_file("train"), df)
    df = store.read_parquet("smollm2-135m", A.ASSET_SPLIT, A.split_file("train"))
    store.upload_dir(local_adapter, "smollm2-135m", A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER)
    local = store.download_dir("smollm2-135m", A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER, dest)
    store.uri("smollm2-135m", A.ASSET_SPLIT, A.FILE_GATES)  # "/…/split/gates.json" or "s3://…"

API of :class:`ArtifactStore` (``partition, asset, *names`` address one artifact):

* ``uri(...)`` — the location as a string (absolute local path, or ``s3://bucket/key``);
  ``local_path(...)`` — a :class:`~pathlib.Path` (local roots only).
* ``exists(...)`` — a file, or a folder that holds at least one file.
* ``read_bytes / write_bytes``, ``read_text / write_text``, ``read_json / write_json``,
  ``read_parquet / write_parquet`` — single files. Writes are atomic: local writes go through
  :mod:`pumpl_assets.core.io` (temp sibling + rename); an object PUT is atomic per object.
* ``upload_dir(local_dir, ...)`` — copy a whole local folder in (local: atomic replace of the
  folder; s3: every file, then a manifest ``<name>.manifest.json`` with each file's sha256,
  written last — a folder without its manifest is incomplete and is never downloaded).
* ``download_dir(..., dest)`` — materialise a folder locally, atomically (temp folder, then
  rename onto ``dest``); every file's sha256 is checked against the manifest (s3) and a
  mismatch raises :class:`ArtifactError`. On a local root, ``dest=None`` returns the folder
  itself without copying.
* ``list_files(...)`` — relative names of the files below a folder.

S3 goes through ``boto3`` (pinned; MLflow's S3 artifact repository uses it too). The endpoint
is ``PUMPL_S3_ENDPOINT_URL``, else ``MLFLOW_S3_ENDPOINT_URL``, else boto3's own resolution
(``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, then AWS); credentials come from boto3's usual
chain (env, profile, role) and never appear in messages, metadata or logs.

Names used by the MLflow registry for a version's own copies (``RUN_*``) also live here, so the
registry and the server agree on them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pumpl_assets.core import settings
from pumpl_assets.core.io import atomic_path, sha256_file, write_bytes_atomic

if TYPE_CHECKING:
    import polars as pl

# ---- asset folders (one per asset and partition) ------------------------------------------------
ASSET_RAW = "raw"
ASSET_DISTILLED = "distilled"
ASSET_VALIDATED = "validated"
ASSET_MERGED = "merged"
ASSET_DATA_PROFILE = "data_profile"
ASSET_SPLIT = "split"
ASSET_LORA_ADAPTER = "lora_adapter"
ASSET_EVAL_REPORT = "eval_report"
ASSET_MERGED_MODEL = "merged_model"
ASSET_AWQ_MODEL = "awq_model"
ASSET_GGUF_MODEL = "gguf_model"
ASSET_REGISTRY_ENTRY = "registry_entry"
ASSETS = (
    ASSET_RAW,
    ASSET_DISTILLED,
    ASSET_VALIDATED,
    ASSET_MERGED,
    ASSET_DATA_PROFILE,
    ASSET_SPLIT,
    ASSET_LORA_ADAPTER,
    ASSET_MERGED_MODEL,
    ASSET_EVAL_REPORT,
    ASSET_AWQ_MODEL,
    ASSET_GGUF_MODEL,
    ASSET_REGISTRY_ENTRY,
)

# ---- files and folders inside an asset folder ---------------------------------------------------
FILE_GATES = "gates.json"  # every gated asset: {check_name: passed}
# raw (core/ingest.write_ingest_outputs)
FILE_EXERCISES = "exercises.parquet"
FILE_PAIRS = "pairs.parquet"
FILE_RAW_QUARANTINE = "quarantine.parquet"
FILE_RAW_FILES = "files.parquet"
# distilled / validated / merged
FILE_DISTILLED = "distilled.parquet"
FILE_QUARANTINE = "quarantine.parquet"
FILE_VALIDATED = "validated.parquet"
FILE_MERGED = "merged.parquet"
FILE_PROFILE_SUMMARY = "profile.json"  # data_profile (plus its tables, core/profile.py)
FILE_PROFILE_MD = "profile.md"
# split (core/dataset.write_split_files): <split>.parquet and <split>.jsonl
SPLITS = ("train", "val", "test")
# lora_adapter (the asset folder is also the trainer's out_dir: core/training/base.py, run.py)
DIR_ADAPTER = "adapter"  # PEFT format: adapter_config.json + adapter_model.safetensors
DIR_CHECKPOINTS = "checkpoints"  # step-NNNNNN/ each with COMPLETE.json (training/base.py)
FILE_TRAIN_LOG = "train.log"
FILE_LOSS_PLOT = "loss.png"
FILE_TRAIN_METRICS = "metrics.json"
FILE_LOSS_CURVE = "loss_curve.png"
FILE_TRAIN_JOB = "job.json"
FILE_TRAIN_RESULT = "result.json"
# eval_report
FILE_SUMMARY = "summary.json"
FILE_SUMMARY_FOR_REGISTRY = "summary_for_registry.json"
FILE_PER_EXAMPLE = "per_example.parquet"
FILE_RATES_PLOT = "rates.png"
FILE_LATENCY_PLOT = "latency.png"
FILE_FAILURE_CAUSES = "failure_causes.json"  # eval_report: top failure reasons per check
# merged_model / awq_model: a Hugging Face folder
DIR_MODEL = "model"
FILE_AWQ_EVAL = "awq_eval.json"
FILE_AWQ_PER_EXAMPLE = "awq_per_example.parquet"
# gguf_model: DIR_MODEL holds the GGUF quants + the HF tokenizer files (core/gguf.export_gguf)
FILE_GGUF_EVAL = "gguf_eval.json"
FILE_GGUF_PER_EXAMPLE = "gguf_per_example.parquet"
# registry_entry
FILE_ENTRY = "entry.json"
# inside a Hugging Face model folder
FILE_MODEL_CONFIG = "config.json"

# ---- a registered version's own copies (artifact paths inside its MLflow run) --------------------
RUN_MERGED = "merged"  # the full-precision merged model (transformers / bnb / vllm engines)
RUN_AWQ = "awq"  # the AWQ W4A16 model (awq engine)
RUN_GGUF = "gguf"  # the GGUF quants + tokenizer (llamacpp engine)
RUN_CATALOGUE = "catalogue"  # holds FILE_EXERCISES: the catalogue the grammar restricts names to
RUN_MODEL_DIRS = {"merged": RUN_MERGED, "awq": RUN_AWQ, "gguf": RUN_GGUF}

MANIFEST_SUFFIX = ".manifest.json"


def split_file(split: str, ext: str = "parquet") -> str:
    """``train.parquet`` / ``val.jsonl`` … (``split`` in :data:`SPLITS`, ``ext`` parquet or jsonl)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    if ext not in ("parquet", "jsonl"):
        raise ValueError(f"split file extension {ext!r} is not parquet or jsonl")
    return f"{split}.{ext}"


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete or corrupt (the message names its URI, never credentials)."""


def redact(uri: str) -> str:
    """``uri`` without any ``user:password@`` part (for messages and metadata)."""
    parsed = urlparse(uri)
    if parsed.username or parsed.password:
        netloc = parsed.hostname or ""
        if parsed.port:
            netloc += f":{parsed.port}"
        return parsed._replace(netloc=netloc).geturl()
    return uri


def artifact_root() -> str:
    """``PUMPL_ARTIFACT_ROOT`` (local folder or ``s3://bucket/prefix``), else ``<data root>/artifacts``."""
    value = os.environ.get("PUMPL_ARTIFACT_ROOT")
    if value:
        return value if "://" in value else str(Path(value).expanduser().resolve())
    return str(settings.data_root() / "artifacts")


def s3_endpoint_url() -> str | None:
    return os.environ.get("PUMPL_S3_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def s3_client() -> Any:
    """A boto3 S3 client for the configured endpoint (credentials from boto3's usual chain)."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint_url())


def _check_name(part: str) -> str:
    if not part or part in (".", "..") or "\\" in part or part.startswith("/"):
        raise ValueError(f"bad artifact path component {part!r}")
    return part


@dataclass(frozen=True)
class ArtifactStore:
    """Artifacts under ``root`` (a local folder or ``s3://bucket/prefix``); see the module docstring."""

    root: str

    @classmethod
    def from_env(cls) -> ArtifactStore:
        return cls(artifact_root())

    # ---- addressing -------------------------------------------------------------------------
    @property
    def is_remote(self) -> bool:
        return urlparse(self.root).scheme not in ("", "file")

    @property
    def _bucket_prefix(self) -> tuple[str, str]:
        parsed = urlparse(self.root)
        if parsed.scheme != "s3":
            raise ArtifactError(
                f"artifact root {redact(self.root)!r}: only local folders and s3:// are supported"
            )
        return parsed.netloc, parsed.path.strip("/")

    def _rel(self, partition: str, asset: str, *names: str) -> str:
        parts = [_check_name(partition), _check_name(asset)]
        for n in names:
            parts.extend(_check_name(p) for p in n.split("/") if p)
        return "/".join(parts)

    def _key(self, partition: str, asset: str, *names: str) -> str:
        _, prefix = self._bucket_prefix
        rel = self._rel(partition, asset, *names)
        return f"{prefix}/{rel}" if prefix else rel

    def local_path(self, partition: str, asset: str, *names: str) -> Path:
        if self.is_remote:
            raise ArtifactError(f"{self.uri(partition, asset, *names)} is not on the local file system")
        root = Path(urlparse(self.root).path if self.root.startswith("file:") else self.root)
        return root.joinpath(*self._rel(partition, asset, *names).split("/"))

    def uri(self, partition: str, asset: str, *names: str) -> str:
        if self.is_remote:
            bucket, _ = self._bucket_prefix
            return f"s3://{bucket}/{self._key(partition, asset, *names)}"
        return str(self.local_path(partition, asset, *names))

    # ---- single files -----------------------------------------------------------------------
    def exists(self, partition: str, asset: str, *names: str) -> bool:
        if not self.is_remote:
            p = self.local_path(partition, asset, *names)
            return p.is_file() or (p.is_dir() and any(f.is_file() for f in p.rglob("*")))
        key = self._key(partition, asset, *names)
        if self._head(key):
            return True
        return next(self._iter_keys(key + "/"), None) is not None

    def read_bytes(self, partition: str, asset: str, *names: str) -> bytes:
        if not self.is_remote:
            p = self.local_path(partition, asset, *names)
            if not p.is_file():
                raise ArtifactError(
                    f"artifact {p} does not exist; materialize asset {asset!r} for {partition!r}"
                )
            return p.read_bytes()
        bucket, _ = self._bucket_prefix
        key = self._key(partition, asset, *names)
        try:
            return bytes(s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())
        except Exception as exc:
            raise ArtifactError(
                f"cannot read s3://{bucket}/{key} ({_err(exc)}); materialize asset {asset!r} for {partition!r}"
            ) from None

    def write_bytes(self, partition: str, asset: str, *names: str, data: bytes) -> str:
        if not self.is_remote:
            return str(write_bytes_atomic(self.local_path(partition, asset, *names), data))
        bucket, _ = self._bucket_prefix
        key = self._key(partition, asset, *names)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as exc:
            raise ArtifactError(f"cannot write s3://{bucket}/{key} ({_err(exc)})") from None
        return f"s3://{bucket}/{key}"

    def read_text(self, partition: str, asset: str, *names: str) -> str:
        return self.read_bytes(partition, asset, *names).decode("utf-8")

    def write_text(self, partition: str, asset: str, *names: str, text: str) -> str:
        return self.write_bytes(partition, asset, *names, data=text.encode("utf-8"))

    def read_json(self, partition: str, asset: str, *names: str) -> Any:
        return json.loads(self.read_bytes(partition, asset, *names))

    def write_json(self, partition: str, asset: str, *names: str, obj: Any) -> str:
        # Same serialisation as core.io.write_json_atomic (byte-identical local files).
        return self.write_text(
            partition, asset, *names, text=json.dumps(obj, indent=2, sort_keys=True, default=str)
        )

    def read_parquet(self, partition: str, asset: str, *names: str) -> pl.DataFrame:
        import polars as pl

        if not self.is_remote:
            p = self.local_path(partition, asset, *names)
            if not p.is_file():
                raise ArtifactError(
                    f"artifact {p} does not exist; materialize asset {asset!r} for {partition!r}"
                )
            return pl.read_parquet(p)
        return pl.read_parquet(io.BytesIO(self.read_bytes(partition, asset, *names)))

    def write_parquet(self, partition: str, asset: str, *names: str, df: pl.DataFrame) -> str:
        if not self.is_remote:
            from pumpl_assets.core.io import write_parquet_atomic

            return str(write_parquet_atomic(self.local_path(partition, asset, *names), df))
        buf = io.BytesIO()
        df.write_parquet(buf)
        return self.write_bytes(partition, asset, *names, data=buf.getvalue())

    # ---- folders ----------------------------------------------------------------------------
    def list_files(self, partition: str, asset: str, *names: str) -> list[str]:
        """Relative names (``a/b.json``) of the files under a folder, sorted; [] when absent."""
        if not self.is_remote:
            p = self.local_path(partition, asset, *names)
            if not p.is_dir():
                return []
            return sorted(str(f.relative_to(p)).replace(os.sep, "/") for f in p.rglob("*") if f.is_file())
        prefix = self._key(partition, asset, *names) + "/"
        return sorted(k[len(prefix) :] for k in self._iter_keys(prefix))

    def upload_dir(self, local_dir: Path | str, partition: str, asset: str, *names: str) -> str:
        """Copy the folder ``local_dir`` to this artifact; returns its URI (see module docstring)."""
        src = Path(local_dir)
        if not src.is_dir():
            raise ArtifactError(f"cannot upload {src}: not a folder")
        files = sorted(f for f in src.rglob("*") if f.is_file())
        if not self.is_remote:
            dest = self.local_path(partition, asset, *names)
            with atomic_path(dest) as tmp:
                shutil.copytree(src, tmp)
            return str(dest)
        bucket, _ = self._bucket_prefix
        key = self._key(partition, asset, *names)
        client = s3_client()
        manifest: dict[str, str] = {}
        try:
            # The old manifest goes first: a reader never pairs it with half-replaced files.
            client.delete_object(Bucket=bucket, Key=key + MANIFEST_SUFFIX)
            stale = set(self._iter_keys(key + "/", client))
            for f in files:
                rel = str(f.relative_to(src)).replace(os.sep, "/")
                manifest[rel] = sha256_file(f)
                client.upload_file(str(f), bucket, f"{key}/{rel}")
                stale.discard(f"{key}/{rel}")
            for k in sorted(stale):
                client.delete_object(Bucket=bucket, Key=k)
            body = json.dumps({"files": manifest}, indent=2, sort_keys=True).encode()
            client.put_object(Bucket=bucket, Key=key + MANIFEST_SUFFIX, Body=body)
        except ArtifactError:
            raise
        except Exception as exc:
            raise ArtifactError(f"cannot upload {src} to s3://{bucket}/{key} ({_err(exc)})") from None
        return f"s3://{bucket}/{key}"

    def download_dir(self, partition: str, asset: str, *names: str, dest: Path | str | None = None) -> Path:
        """The folder as a local path; copied (atomically, hash-checked) to ``dest`` when given.

        A remote root needs ``dest``. A local root with ``dest=None`` returns the folder itself.
        """
        if not self.is_remote:
            src = self.local_path(partition, asset, *names)
            if not src.is_dir():
                raise ArtifactError(f"artifact folder {src} does not exist; materialize asset {asset!r}")
            if dest is None:
                return src
            with atomic_path(dest) as tmp:
                shutil.copytree(src, tmp)
            return Path(dest)
        if dest is None:
            raise ArtifactError(f"download_dir of {self.uri(partition, asset, *names)} needs a local dest")
        bucket, _ = self._bucket_prefix
        key = self._key(partition, asset, *names)
        client = s3_client()
        try:
            raw = client.get_object(Bucket=bucket, Key=key + MANIFEST_SUFFIX)["Body"].read()
        except Exception as exc:
            raise ArtifactError(
                f"s3://{bucket}/{key} has no manifest ({_err(exc)}): the folder was never uploaded "
                f"completely; materialize asset {asset!r} for {partition!r}"
            ) from None
        manifest: dict[str, str] = json.loads(raw)["files"]
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            for rel, digest in sorted(manifest.items()):
                target = tmp.joinpath(*[_check_name(p) for p in rel.split("/")])
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    client.download_file(bucket, f"{key}/{rel}", str(target))
                except Exception as exc:
                    raise ArtifactError(f"cannot download s3://{bucket}/{key}/{rel} ({_err(exc)})") from None
                if sha256_file(target) != digest:
                    raise ArtifactError(f"s3://{bucket}/{key}/{rel}: sha256 differs from its manifest")
        return Path(dest)

    # ---- s3 helpers -------------------------------------------------------------------------
    def _head(self, key: str) -> bool:
        bucket, _ = self._bucket_prefix
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except Exception:
            return False

    def _iter_keys(self, prefix: str, client: Any = None) -> Iterator[str]:
        bucket, _ = self._bucket_prefix
        client = client or s3_client()
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []) or []:
                    yield str(obj["Key"])
        except Exception as exc:
            raise ArtifactError(f"cannot list s3://{bucket}/{prefix} ({_err(exc)})") from None


def _err(exc: BaseException) -> str:
    """A short description of a storage error: its type and AWS error code, never request headers."""
    code = getattr(exc, "response", {}) or {}
    code = code.get("Error", {}).get("Code") if isinstance(code, dict) else None
    return f"{type(exc).__name__}{': ' + str(code) if code else ''}"


def default_store() -> ArtifactStore:
    return ArtifactStore.from_env()


def same_folder(store: ArtifactStore, partition: str, asset: str, local_dir: Path | str) -> bool:
    """Whether ``store`` keeps this asset's artifacts in ``local_dir`` itself (the default local root)."""
    if store.is_remote:
        return False
    return store.local_path(partition, asset).resolve() == Path(local_dir).resolve()


def publish_files(
    local_dir: Path | str, partition: str, asset: str, names: list[str], store: ArtifactStore | None = None
) -> dict[str, str]:
    """Copy the named files of a local asset folder to the store by contract names.

    A no-op (``{}``) when the store's folder for the asset IS ``local_dir`` (the default: no
    ``PUMPL_ARTIFACT_ROOT``); else ``{name: uri}`` (URIs redacted). A named file missing locally
    raises :class:`ArtifactError`.
    """
    store = store or ArtifactStore.from_env()
    if same_folder(store, partition, asset, local_dir):
        return {}
    out: dict[str, str] = {}
    for name in names:
        src = Path(local_dir) / name
        if not src.is_file():
            raise ArtifactError(f"cannot publish {src}: no such file")
        out[name] = redact(store.write_bytes(partition, asset, name, data=src.read_bytes()))
    return out
