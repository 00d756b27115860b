"""The training package's shared contract (a leaf: it imports no other training module).

Layout, in the torchtune manner — siblings composed by the entry point, no module importing
another sibling's internals:

* model loaders: :mod:`.model_peft` (transformers + PEFT), :mod:`.model_unsloth` (FastLanguageModel);
* recipes, one per file: :mod:`.recipe_plain` (packed, answer-only plain loop), :mod:`.recipe_sft`
  (PEFT + TRL SFTTrainer);
* data: :mod:`.data`; gates: :mod:`.gates`; the job: :mod:`.job`;
* the entry point :mod:`.run` picks a loader and a recipe for a job (``select_backend``, ``train_lora``).

This module holds what they share: :class:`TrainResult`, :class:`TrainingSession` (a loaded model +
the run's settings), errors, environment checks, checkpoints and metrics.

Assumptions, stated once:

* A backend trains a LoRA adapter on a causal LM and writes it in PEFT format
  (``adapter_config.json`` + ``adapter_model.safetensors``) to ``out_dir/"adapter"``,
  atomically (:func:`pumpl_assets.core.io.atomic_path`), plus ``out_dir/"metrics.json"``
  and ``out_dir/"loss_curve.png"``.
* Checkpoints go to ``out_dir/"checkpoints"/step-NNNNNN`` every ``cfg.checkpoint_every``
  optimizer steps. Each is written to a temporary sibling and renamed into place, and carries
  a ``COMPLETE.json`` manifest (sha256 of every file, written last); resume only picks a
  checkpoint whose manifest verifies AND whose run fingerprint (base model, recipe, data,
  prompt style, system prompt) matches, so a half-written or foreign checkpoint is never used.
* Calling ``train`` again with the same ``out_dir`` after a kill resumes from the newest such
  checkpoint; the data order is a pure function of the seed, so the resumed run sees exactly
  the batches the killed run had not yet consumed.
* This module imports neither transformers nor peft (the unsloth loader must import unsloth
  before them, in a fresh process: see :mod:`pumpl_assets.core.training.run`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pumpl_assets.core.io import atomic_path, sha256_file, write_json_atomic
from pumpl_assets.core.schemas import TrainingConfig, TrainingExample

log = logging.getLogger(__name__)

BACKENDS = ("auto", "unsloth", "peft")


class BackendUnavailableError(RuntimeError):
    """The requested backend / device / recipe combination cannot train here; the message says why."""


@dataclass
class TrainResult:
    """What one ``train`` call did.

    ``steps`` counts the optimizer steps run by THIS call (a resumed run runs fewer);
    ``total_steps`` is the schedule's length (the global step the adapter was saved at).
    ``tokens_per_s`` is real (non-padding) tokens processed per second of training-loop wall
    time (model loading and validation excluded); ``wall_s`` is the whole ``train`` call.
    """

    adapter_dir: Path
    steps: int
    resumed_from_step: int | None
    train_loss: list[tuple[int, float]]
    val_loss: float | None
    tokens_per_s: float
    peak_rss_mb: float
    wall_s: float
    backend: str
    train_tokens: int
    total_steps: int = 0
    n_train_examples: int = 0
    skipped_too_long: int = 0
    metrics_path: Path | None = None
    loss_plot: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("adapter_dir", "metrics_path", "loss_plot"):
            d[k] = str(d[k]) if d[k] is not None else None
        d["train_loss"] = [[s, v] for s, v in self.train_loss]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainResult:
        d = dict(d)
        for k in ("adapter_dir", "metrics_path", "loss_plot"):
            d[k] = Path(d[k]) if d.get(k) else None
        d["train_loss"] = [(int(s), float(v)) for s, v in d.get("train_loss", [])]
        return cls(**d)


@runtime_checkable
class TrainerBackend(Protocol):
    """A LoRA trainer. Call ``setup`` once, ``train`` once, then always ``cleanup``."""

    name: str

    def setup(self, base_model: Path | str, cfg: TrainingConfig, out_dir: Path) -> None:
        """Load tokenizer + base model, attach LoRA per ``cfg``; nothing is trained yet."""
        ...

    def train(self, train: list[TrainingExample], val: list[TrainingExample]) -> TrainResult:
        """Train (resuming from ``out_dir/checkpoints`` when possible), save the adapter, return metrics."""
        ...

    def cleanup(self) -> None:
        """Free the model and optimizer (idempotent)."""
        ...


# ---------------------------------------------------------------------------------------------
# Environment checks


def patch_peft_torchao() -> None:
    """Make peft usable next to the installed torchao 0.15.

    peft 0.21 probes torchao for every LoRA layer and *raises* when torchao < 0.16 is installed
    (unsloth_zoo pulls torchao 0.15), so ``get_peft_model`` / ``PeftModel.from_pretrained`` fail
    outright. We never train torchao-quantized weights, so the probe is answered "not available".
    Idempotent; a no-op when torchao is absent or new enough.
    """
    try:
        from importlib.metadata import PackageNotFoundError, version

        from packaging.version import Version

        try:
            if Version(version("torchao")) >= Version("0.16.0"):
                return
        except PackageNotFoundError:
            return
        import peft.import_utils as iu
        import peft.tuners.lora.torchao as lt

        def _no_torchao() -> bool:
            return False

        iu.is_torchao_available = _no_torchao  # type: ignore[assignment]
        lt.is_torchao_available = _no_torchao  # type: ignore[assignment]
    except ImportError:  # peft itself missing: the caller's import will say so
        return


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` where a CUDA device is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not cuda_available():
        raise BackendUnavailableError("device='cuda' requested but torch sees no CUDA device")
    return device


def unsloth_importable() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _cpu_jiffies() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs since boot (``/proc/stat``), or None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [float(x) for x in fh.readline().split()[1:9]]  # user .. steal
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields)
    return total - idle, total


class BusyCores:
    """How many cores OTHER processes kept busy since the previous reading.

    All CPUs' busy share over the interval (``/proc/stat``) minus this process's own CPU time
    (every thread of it), in cores. Unlike the 1-minute load average it measures now, and it does
    not count the work this job did itself a moment ago (the Dagster step before training).
    """

    def __init__(self) -> None:
        self._cpu, self._own = _cpu_jiffies(), time.process_time()

    def read(self) -> float | None:
        cpu, own = _cpu_jiffies(), time.process_time()
        prev, prev_own = self._cpu, self._own
        self._cpu, self._own = cpu, own
        if cpu is None or prev is None or cpu[1] <= prev[1]:
            return None
        cores = cpu_cores()
        d_busy, d_total = cpu[0] - prev[0], cpu[1] - prev[1]
        wall_s = d_total / cores / os.sysconf("SC_CLK_TCK")
        return max(0.0, d_busy / d_total * cores - (own - prev_own) / wall_s)


def threads_for(cores: int, busy_elsewhere: float) -> int:
    """The cores nobody else is using (at least 1): a core half-used by others counts as taken."""
    return max(1, min(cores, cores - math.floor(busy_elsewhere + 0.5)))


def torch_threads(sample_s: float = 0.5) -> int:
    """Intra-op threads for CPU training: ``PUMPL_TORCH_THREADS`` if set, else the cores not busy now.

    Measured on this shared 2-core box under load ~7: one LoRA step of SmolLM2 (512 tokens) took
    8.4 s with 1 thread and 28-55 s with 2 (OpenMP threads spin at barriers while descheduled), so
    threads go only to idle cores. Idle is sampled over ``sample_s`` (:class:`BusyCores`): the
    1-minute load average used before counted the job's own previous step, and in CI it gave the
    whole training one thread on an otherwise idle box (7.3 s a step against 5.3 s with two).
    :class:`ThreadGovernor` re-checks during training.
    """
    env = os.environ.get("PUMPL_TORCH_THREADS")
    if env:
        return max(1, int(env))
    cores = cpu_cores()
    probe = BusyCores()
    time.sleep(sample_s)
    busy = probe.read()
    if busy is None:  # pragma: no cover - no /proc/stat (not Linux): every core
        return cores
    return threads_for(cores, busy)


class ThreadGovernor:
    """Re-sizes torch's intra-op pool to the idle cores every ``every`` training steps (CPU only).

    A training runs for minutes to hours; what else the box runs changes meanwhile. Each check
    reads :class:`BusyCores` over the steps since the last one, so it needs no sleep. Off when
    ``PUMPL_TORCH_THREADS`` fixes the count. ``changes`` records (step, threads) for the metrics.
    """

    def __init__(self, every: int = 10, *, enabled: bool = True) -> None:
        self.every = max(1, every)
        self.enabled = enabled and not os.environ.get("PUMPL_TORCH_THREADS")
        self.changes: list[tuple[int, int]] = []
        self._probe = BusyCores() if self.enabled else None

    def after_step(self, step: int) -> None:
        if self._probe is None or step % self.every:
            return
        busy = self._probe.read()
        if busy is None:
            return
        import torch

        want = threads_for(cpu_cores(), busy)
        if want != torch.get_num_threads():
            log.info(
                "torch threads %d -> %d (other processes busy on %.1f cores)",
                torch.get_num_threads(),
                want,
                busy,
            )
            torch.set_num_threads(want)
            self.changes.append((step, want))


def resolve_backend_name(name: str, device: str, cfg: TrainingConfig | None = None) -> tuple[str, str]:
    """Pick the concrete (backend, device) for a request, or raise :class:`BackendUnavailableError`.

    ``auto`` chooses unsloth only where it is importable AND a CUDA device is present. On CPU
    unsloth only has a fallback that is plain PEFT plus patches; measured here it is no faster
    than our own loop and pays ~7 s of import patching, so ``auto`` picks peft on CPU.
    Unsupported combinations fail loudly:

    * unsloth requested but not installed;
    * unsloth requested on CPU with ``UNSLOTH_DISABLE_CPU_FALLBACK=1``;
    * ``load_in_4bit`` without CUDA (bitsandbytes 4-bit on CPU trains through a slow,
      warning-laden path that we do not support).
    """
    if name not in BACKENDS:
        raise BackendUnavailableError(
            f"unknown trainer backend {name!r}; choose one of {', '.join(BACKENDS)}"
        )
    dev = resolve_device(device)
    if name == "auto":
        name = "unsloth" if (dev == "cuda" and unsloth_importable()) else "peft"
    if name == "unsloth":
        if not unsloth_importable():
            raise BackendUnavailableError(
                "backend 'unsloth' requested but the unsloth package is not installed"
            )
        if dev == "cpu" and os.environ.get("UNSLOTH_DISABLE_CPU_FALLBACK", "0") not in ("", "0"):
            raise BackendUnavailableError(
                "backend 'unsloth' requested on CPU but UNSLOTH_DISABLE_CPU_FALLBACK is set and no CUDA "
                "device is visible; unset it (slow CPU fallback), use backend='peft', or run on a GPU"
            )
    if cfg is not None and cfg.load_in_4bit and dev != "cuda":
        raise BackendUnavailableError(
            f"load_in_4bit=True needs a CUDA device (backend {name!r}, device {dev!r}); "
            "set load_in_4bit=False to train in full precision on CPU"
        )
    return name, dev


# ---------------------------------------------------------------------------------------------
# A loaded model and its run settings (what a loader produces and a recipe trains)


@dataclass
class TrainingSession:
    """A base model with LoRA attached, its tokenizer, and the settings of one training run.

    ``backend`` names the loader (``peft`` / ``unsloth``); ``packing`` is whether micro-batches
    are packed for this loader on this device (unsloth declines on CUDA).
    """

    backend: str
    device: str
    model: Any
    tokenizer: Any
    cfg: TrainingConfig
    out_dir: Path
    base_model: str
    style: str = "chat_template"
    system_prompt: str | None = None
    packing: bool = True
    setup_s: float = 0.0


def write_adapter(session: TrainingSession, **extra: Any) -> Path:
    """``out_dir/adapter``: the PEFT adapter + ``pumpl_training.json`` (how it was trained), atomically."""
    dest = session.out_dir / "adapter"
    with atomic_path(dest) as tmp:
        session.model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "pumpl_training.json").write_text(
            json.dumps(
                {
                    "style": session.style,
                    "system_prompt": session.system_prompt,
                    "base_model": session.base_model,
                    "recipe": session.cfg.model_dump(),
                    "backend": session.backend,
                    **extra,
                },
                indent=2,
            )
        )
    return dest


# ---------------------------------------------------------------------------------------------
# Checkpoints

CHECKPOINTS = "checkpoints"
MANIFEST = "COMPLETE.json"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINTS / f"step-{step:06d}"


def write_checkpoint(out_dir: Path, step: int, fingerprint: str, write_files: Any) -> Path:
    """Write a checkpoint atomically: ``write_files(tmp_dir)`` fills it, then the manifest goes in last."""
    dest = checkpoint_dir(out_dir, step)
    with atomic_path(dest) as tmp:
        tmp.mkdir(parents=True)
        write_files(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "fingerprint": fingerprint, "files": files}))
    return dest


def verify_checkpoint(path: Path, fingerprint: str) -> int | None:
    """The checkpoint's step if it is complete, intact and from the same run; else None."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("fingerprint") != fingerprint:
            return None
        for name, digest in manifest["files"].items():
            if sha256_file(path / name) != digest:
                log.warning("checkpoint %s: %s does not match its manifest; ignored", path, name)
                return None
        return int(manifest["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_checkpoint(out_dir: Path, fingerprint: str) -> tuple[Path, int] | None:
    """Newest verified checkpoint of this run, or None."""
    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return None
    candidates = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), reverse=True
    )
    for path in candidates:
        step = verify_checkpoint(path, fingerprint)
        if step is not None:
            return path, step
        log.warning("skipping incomplete or foreign checkpoint %s", path)
    return None


def prune_checkpoints(out_dir: Path, keep: int = 2) -> None:
    import shutil

    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return
    # Leftover temporaries of a killed write (".step-....tmp") and older checkpoints go.
    for p in root.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            shutil.rmtree(p, ignore_errors=True)
    steps = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), reverse=True)
    for p in steps[keep:]:
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Metrics


def write_metrics(
    out_dir: Path, result: TrainResult, extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """metrics.json + loss_curve.png, both atomic. Returns their paths."""
    metrics_path = out_dir / "metrics.json"
    plot_path = out_dir / "loss_curve.png"
    payload = result.to_json() | (extra or {})
    payload.pop("metrics_path", None)
    payload.pop("loss_plot", None)
    write_json_atomic(metrics_path, payload)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if result.train_loss:
        xs, ys = zip(*result.train_loss, strict=True)
        ax.plot(xs, ys, label="train loss")
    if result.val_loss is not None and result.train_loss:
        ax.axhline(
            result.val_loss, color="tab:orange", linestyle="--", label=f"val loss {result.val_loss:.3f}"
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(f"LoRA training ({result.backend})")
    ax.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(plot_path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return metrics_path, plot_path
