"""llama.cpp (GGUF) engine: the HF engines' decode loop with llama.cpp doing the forward passes.

:class:`LlamaCppEngine` reuses :class:`~pumpl_assets.core.generation.HFEngine`'s public API and
per-row logic (sampling with per-row seeded ``torch.Generator``, stop ids / stop strings /
``max_new_tokens``, xgrammar JSON-schema masks from the same :class:`GrammarCache`), so its
outputs follow the same rules; only ``_decode`` differs:

* prompts are tokenized by the HF tokenizer saved next to the GGUF (the prompts are rendered
  with the HF chat template elsewhere) and those ids are fed to llama.cpp as they are;
* the prompts of one ``generate`` call are decoded as parallel sequences of one llama.cpp
  context (non-unified KV: each sequence attends only to its own cells), one token per live
  sequence per ``llama_decode``, at most ``max_batch`` at once: a finished sequence's KV is
  dropped (``llama_memory_seq_rm``), the live ones are kept in slots 0..k-1, and the next prompt
  is prefilled into a free slot (continuous batching);
* the context is kept between calls and re-created only when a call needs more sequences or
  a longer per-sequence window than it has.

Imported lazily by :func:`pumpl_assets.core.generation.load_engine` (kind ``"llamacpp"``).
"""

from __future__ import annotations

import ctypes
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from pumpl_assets.core.generation import (
    EngineError,
    Generation,
    GenerationParams,
    HFEngine,
    _Row,
    _stop_ids,
)

PREFILL_BATCH = 2048  # tokens per llama_decode while reading prompts
UBATCH = 512
CTX_ROUND = 256


def resolve_gguf(model_path: str | Path) -> Path:
    """A ``.gguf`` file, or a folder holding ``model.gguf``, or the file its export record
    (``pumpl_gguf.json``) names as ``default``, or exactly one ``*.gguf``."""
    path = Path(model_path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"engine 'llamacpp' needs a .gguf file, got {path}")
        return path
    if path.is_dir():
        if (path / "model.gguf").is_file():
            return path / "model.gguf"
        record = path / "pumpl_gguf.json"
        if record.is_file():
            default = json.loads(record.read_text(encoding="utf-8")).get("default")
            if default and (path / default).is_file():
                return path / default
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(f.name for f in found)
            raise ValueError(f"{path} holds several GGUF files ({names}) and no model.gguf; pass one file")
    raise FileNotFoundError(f"no GGUF model at {path} (expected a .gguf file or a folder with model.gguf)")


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
        from llama_cpp._logger import set_verbose
    except ImportError as exc:
        raise EngineError(
            "engine 'llamacpp' needs the llama-cpp-python package (run scripts/llamacpp.sh)"
        ) from exc
    set_verbose(False)  # llama.cpp logs every load and context to stderr otherwise
    return llama_cpp


def _default_threads() -> int:
    from pumpl_assets.core.training.base import torch_threads

    return torch_threads()


class LlamaCppEngine(HFEngine):
    """One GGUF model (llama.cpp, CPU) + its HF tokenizer + the shared grammar cache."""

    computes_loss = False  # no torch forward: evaluation reports no test loss for a GGUF

    def __init__(
        self,
        model_path: str | Path,
        *,
        tokenizer_path: str | Path | None = None,
        n_threads: int | None = None,
        parallel: bool = True,
        max_seqs: int = 64,
    ):
        llama_cpp = _import_llama_cpp()
        from transformers import AutoTokenizer

        gguf = resolve_gguf(model_path)
        tok_dir = Path(tokenizer_path) if tokenizer_path is not None else gguf.parent
        if not (tok_dir / "tokenizer.json").is_file() and not (tok_dir / "tokenizer_config.json").is_file():
            raise FileNotFoundError(
                f"no Hugging Face tokenizer in {tok_dir}; export with pumpl_assets.core.gguf.export_gguf "
                "(it copies the tokenizer next to the GGUF) or pass tokenizer_path"
            )
        self._ll = llama_cpp
        self.name = "llamacpp"
        self.model_path = str(gguf)
        self.adapter_path = None
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        self.parallel = parallel
        self.max_seqs = max_seqs
        self.n_threads = n_threads or _default_threads()

        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        # No extra buffer types (AMX, CPU_REPACK): a native build on an AMX Xeon puts the weights in an AMX
        # buffer, and the first decode segfaults in ggml_backend_amx_mul_mat (llama.cpp #20824, never fixed;
        # reproduced here with SmolLM2 q8_0 and a tiny model, 2026-12-04). Plain CPU buffers decode fine.
        mparams.use_extra_bufts = False
        model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), mparams)
        if not model:
            raise EngineError(f"llama.cpp could not load {gguf}")
        self.model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        if self.vocab_size < len(self.tokenizer):
            raise EngineError(
                f"GGUF vocab ({self.vocab_size}) is smaller than the tokenizer's ({len(self.tokenizer)}) "
                f"in {tok_dir}: the tokenizer does not belong to {gguf}"
            )
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(model))
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(model, buf, 256)
        self.description = buf.value.decode(errors="replace")  # e.g. "llama ?B Q8_0"
        self.quantization = self.description.rsplit(" ", 1)[-1].lower() or None
        self.device = "cpu"
        self.dtype = self.quantization or "gguf"
        self.stop_token_ids = _stop_ids(_ConfigView(tok_dir), self.tokenizer)
        self.pad_token_id = self.stop_token_ids[0]
        self._grammars = None
        self.last_stats = {}
        import threading

        self._lock = threading.Lock()
        self._ctx: Any = None
        self._ctx_seqs = 0
        self._ctx_per_seq = 0
        self._batch: Any = None

    # -- llama.cpp plumbing ------------------------------------------------------------------
    def llama_tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenization of ``text`` (special tokens parsed, none added); for parity checks."""
        ll = self._ll
        raw = text.encode("utf-8")
        cap = len(raw) + 16
        arr = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self._vocab, raw, len(raw), arr, cap, False, True)
        if n < 0:
            raise EngineError(f"llama_tokenize needs {-n} tokens, buffer had {cap}")
        return [int(arr[i]) for i in range(n)]

    def _ensure_ctx(self, n_seqs: int, per_seq: int) -> Any:
        ll = self._ll
        per_seq = -(-per_seq // CTX_ROUND) * CTX_ROUND
        if self._ctx is not None and n_seqs <= self._ctx_seqs and per_seq <= self._ctx_per_seq:
            ll.llama_memory_clear(ll.llama_get_memory(self._ctx), True)
            return self._ctx
        self._free_ctx()
        seqs = max(n_seqs, self._ctx_seqs)
        per_seq = max(per_seq, self._ctx_per_seq)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = seqs * per_seq
        cparams.n_batch = PREFILL_BATCH
        cparams.n_ubatch = UBATCH
        cparams.n_seq_max = seqs
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.kv_unified = False  # per-sequence KV streams: a token attends only to its own row
        cparams.no_perf = True
        ctx = ll.llama_init_from_model(self.model, cparams)
        if not ctx:
            raise EngineError(f"llama.cpp could not create a context for {seqs} sequences x {per_seq} tokens")
        self._ctx, self._ctx_seqs, self._ctx_per_seq = ctx, seqs, per_seq
        if self._batch is None:
            self._batch = ll.llama_batch_init(max(PREFILL_BATCH, self.max_seqs), 0, 1)
        return ctx

    def _free_ctx(self) -> None:
        if self._ctx is not None:
            self._ll.llama_free(self._ctx)
            self._ctx = None

    def _run(self, ctx: Any, items: list[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of ``items`` = (token, pos, seq_id, want_logits)."""
        b = self._batch
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want
        b.n_tokens = len(items)
        rc = self._ll.llama_decode(ctx, b)
        if rc != 0:
            raise EngineError(f"llama_decode failed with code {rc} ({len(items)} tokens)")

    def _logits_row(self, ctx: Any, i: int) -> np.ndarray:
        ptr = self._ll.llama_get_logits_ith(ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab_size,))

    # -- public API --------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[str],
        params: GenerationParams | list[GenerationParams],
        json_schemas: list[dict | None] | None = None,
        *,
        max_batch: int | None = None,
    ) -> list[Generation]:
        plist = params if isinstance(params, list) else [params] * len(prompts)
        schemas: list[dict | None] = list(json_schemas) if json_schemas is not None else [None] * len(prompts)
        if len(plist) != len(prompts) or len(schemas) != len(prompts):
            raise ValueError(
                f"got {len(prompts)} prompts but {len(plist)} params and {len(schemas)} json_schemas"
            )
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if self.parallel and max_batch is not None and max_batch < len(prompts):
            return HFEngine.generate(self, prompts, plist, schemas, max_batch=max_batch)
        if self.parallel or len(prompts) <= 1:
            return super().generate(prompts, params, json_schemas)
        out: list[Generation] = []
        for p, q, s in zip(prompts, plist, schemas, strict=True):  # a loop: super() fails in a comprehension
            out.extend(super().generate([p], [q], [s]))
        return out

    def close(self) -> None:
        with self._lock:
            self._free_ctx()
            if self._batch is not None:
                self._ll.llama_batch_free(self._batch)
                self._batch = None
            if self.model is not None:
                self._ll.llama_model_free(self.model)
                self.model = None
            self._grammars = None

    def __del__(self) -> None:  # best effort: free C memory if close() was not called
        try:
            if getattr(self, "model", None) is not None:
                self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    # -- decode loop -------------------------------------------------------------------------
    def _decode(
        self,
        prompts: list[str],
        params: GenerationParams | list[GenerationParams],
        json_schemas: list[dict | None] | None,
        max_batch: int | None = None,
    ) -> Iterator[list[_Row]]:
        """Continuous batching over llama.cpp's parallel sequences: at most ``max_batch`` rows (all when
        None) decode together, one token per live row per ``llama_decode``; when rows finish, the live
        ones move down to slots 0..k-1 (:meth:`_compact`) and the next prompts are prefilled into the
        slots above, so a batch never steps for its longest row alone. Non-unified KV: each sequence
        attends only to its own cells, so a row decodes as it would alone whatever joins or leaves."""
        import torch
        import xgrammar as xgr

        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if self.model is None:
            raise EngineError("engine is closed")
        n = len(prompts)
        if n == 0:
            yield []
            return
        slots = min(n, max_batch or n)
        if slots > self.max_seqs:
            raise ValueError(
                f"{slots} prompts in one batch; engine 'llamacpp' takes at most max_seqs={self.max_seqs}"
            )
        enc, rows = self._prepare_rows(prompts, params, json_schemas)
        for i, e in enumerate(enc):
            if not e:
                raise ValueError(
                    f"prompt {i} is empty after tokenization; llama.cpp needs at least one token"
                )
        plist = [r.params for r in rows]

        bitmask = xgr.allocate_token_bitmask(slots, self.vocab_size) if any(r.matcher for r in rows) else None
        stop_ids = set(self.stop_token_ids)
        per_seq = max(len(e) + p.max_new_tokens for e, p in zip(enc, plist, strict=True)) + 1
        logits = np.empty((slots, self.vocab_size), dtype=np.float32)
        stats = {
            "steps": 0.0, "model_s": 0.0, "grammar_s": 0.0, "prefill_s": 0.0, "compact_s": 0.0, "moved": 0.0,
            "batch": float(slots), "admitted_late": float(n - slots),
            "guard_banned": 0.0, "guard_fallbacks": 0.0, "guard_rule_bans": 0.0, "guard_rule_fallbacks": 0.0,
        }  # fmt: skip
        self.last_stats = stats
        with self._lock:
            ctx = self._ensure_ctx(slots, per_seq)
            mem = self._ll.llama_get_memory(ctx)
            waiting = list(range(n - 1, slots - 1, -1))  # pop() admits in the given order
            positions = [len(e) for e in enc]

            def prefill(new_rows: list[int], first_slot: int) -> None:
                """Prompts of ``new_rows`` into slots ``first_slot``.., packed into chunks of PREFILL_BATCH
                tokens; each prompt's last logits into ``logits[slot]``."""
                t0 = time.perf_counter()
                chunk: list[tuple[int, int, int, bool]] = []
                ends: list[tuple[int, int]] = []  # (slot, index in chunk)
                for k, ri in enumerate(new_rows):
                    rows[ri].started = t0
                    slot, e = first_slot + k, enc[ri]
                    for pos, tok in enumerate(e):
                        last = pos == len(e) - 1
                        if last:
                            ends.append((slot, len(chunk)))
                        chunk.append((tok, pos, slot, last))
                        if len(chunk) == PREFILL_BATCH:
                            self._run(ctx, chunk)
                            for sl, j in ends:
                                logits[sl] = self._logits_row(ctx, j)
                            chunk, ends = [], []
                if chunk:
                    self._run(ctx, chunk)
                    for sl, j in ends:
                        logits[sl] = self._logits_row(ctx, j)
                dt = time.perf_counter() - t0
                stats["prefill_s"] += dt
                stats["model_s"] += dt

            active = list(range(slots))  # live rows; row active[b] is in slot b, its logits in logits[b]
            prefill(active, 0)
            while active:
                t1 = time.perf_counter()
                step_logits = torch.from_numpy(logits[: len(active)])
                self._constrain(step_logits, rows, active, bitmask, stats)
                stats["grammar_s"] += time.perf_counter() - t1
                next_tokens = [self._pick(step_logits[b], rows[ri]) for b, ri in enumerate(active)]
                keep: list[int] = []
                for b, ri in enumerate(active):
                    row = rows[ri]
                    t2 = time.perf_counter()
                    self._advance(row, next_tokens[b], stop_ids)
                    if row.matcher is not None:
                        stats["grammar_s"] += time.perf_counter() - t2
                    if row.finish_reason is None:
                        keep.append(b)
                    else:
                        row.seconds = time.perf_counter() - row.started
                        self._ll.llama_memory_seq_rm(mem, b, -1, -1)
                stats["steps"] += 1
                guards = [r.guard for r in rows if r.guard is not None]
                stats["guard_fallbacks"] = float(sum(g.fallbacks for g in guards))
                stats["guard_rule_bans"] = float(sum(g.rule_bans for g in guards))
                stats["guard_rule_fallbacks"] = float(sum(g.rule_fallbacks for g in guards))
                yield rows
                newcomers = [waiting.pop() for _ in range(min(len(waiting), slots - len(keep)))]
                if not keep and not newcomers:
                    break
                if len(keep) < len(active):
                    t4 = time.perf_counter()
                    stats["moved"] += self._compact(mem, keep)
                    stats["compact_s"] += time.perf_counter() - t4
                    next_tokens = [next_tokens[b] for b in keep]
                    active = [active[b] for b in keep]
                if active:
                    items = [(next_tokens[k], positions[ri], k, True) for k, ri in enumerate(active)]
                    for ri in active:
                        positions[ri] += 1
                    t3 = time.perf_counter()
                    self._run(ctx, items)
                    out = np.ctypeslib.as_array(
                        self._ll.llama_get_logits(ctx), shape=(len(active), self.vocab_size)
                    )
                    logits[: len(active)] = out
                    stats["model_s"] += time.perf_counter() - t3
                if newcomers:
                    prefill(newcomers, len(active))
                    active = active + newcomers

    def _compact(self, mem: Any, keep: list[int]) -> int:
        """Move the live sequences ``keep`` (their slots, ascending) down to slots 0..len(keep)-1.

        With a non-unified KV cache llama.cpp splits a batch into one ubatch per run of consecutive
        sequence ids (``split_equal(sequential=true)``), so once rows finish and leave gaps, each step ran
        one full forward per run -- the weights read once per run, ~10 ms a live row on 2 cores. Keeping
        the live rows in consecutive slots makes every step one ubatch again. A cross-slot move copies
        that sequence's KV buffer once (``llama_memory_seq_cp``, done at the next decode)."""
        ll = self._ll
        moved = 0
        for new, old in enumerate(keep):
            if new != old:
                ll.llama_memory_seq_cp(mem, old, new, -1, -1)
                ll.llama_memory_seq_rm(mem, old, -1, -1)
                moved += 1
        return moved


class _ConfigView:
    """Just enough of a model (``config`` / ``generation_config`` eos ids) for ``_stop_ids``."""

    def __init__(self, folder: Path):
        for attr, fname in (("config", "config.json"), ("generation_config", "generation_config.json")):
            f = folder / fname
            data = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
            setattr(self, attr, SimpleNamespace(eos_token_id=data.get("eos_token_id")))
