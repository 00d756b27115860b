"""Inference engines behind one interface, with request-aware constrained decoding.

Engines (:func:`load_engine` ``kind``):

* ``transformers`` — a Hugging Face folder in fp32/bf16/fp16, optionally with a PEFT
  LoRA adapter applied *unmerged* (so evaluation can toggle it with
  ``engine.model.disable_adapter()``).
* ``bnb4`` / ``bnb8`` — the same folder quantized on load by bitsandbytes (works on CPU
  with bitsandbytes >= 0.48).
* ``awq`` — a compressed-tensors AWQ folder as written by llmcompressor, loaded through
  transformers.
* ``vllm`` — CUDA only, imported lazily; guided JSON through vLLM's structured outputs.
* ``llamacpp`` — a GGUF file (:mod:`pumpl_assets.core.gguf`) run by llama.cpp on CPU, imported
  lazily (:mod:`pumpl_assets.core.engine_llamacpp`); same decode rules and grammars as below.

The four Hugging Face engines share :class:`HFEngine`, a hand-written decode loop (not
``model.generate``) so that every row of a batch can carry its own sampling params, stop
strings and grammar:

* prompts are rendered texts (:func:`pumpl_assets.core.prompts.render_prompt`) and are
  tokenized with ``add_special_tokens=False`` (the template already carries BOS/turn tokens);
* left padding + attention mask + explicit position ids, KV cache, logits of the last
  position only; finished rows are dropped from the batch (cache rows selected away);
* on CPU (``decode_attention="grouped"``, the default) a grouped-query model's decode steps run
  one SDPA per key/value head over a KV cache that grows in place
  (:mod:`pumpl_assets.core.decode_attention`); ``"stock"`` keeps transformers' own ``sdpa`` path
  and ``DynamicCache``;
* a row stops on any end-of-turn id (the union of the config's, generation config's and
  tokenizer's EOS ids), on one of its stop strings (text cut before it), or at its
  ``max_new_tokens`` (``finish_reason="length"``);
* ``temperature == 0`` → greedy (argmax); otherwise temperature + top-p sampling from a
  per-row ``torch.Generator`` seeded with ``params.seed`` (reproducible per row,
  independent of batch composition);
* ``json_schemas[i]`` constrains row ``i`` with xgrammar: a :class:`GrammarMatcher` per row
  fills a token bitmask each step; rows without a schema in the same batch are untouched.
  The grammar ends in a stop token, so a constrained row that finishes with ``"stop"``
  always parses against the schema. Stop strings are ignored for constrained rows (the
  grammar decides where the answer ends). Compiled grammars are cached per tokenizer in an
  LRU keyed by the SHA-256 of the canonical schema JSON; output is compact JSON
  (``any_whitespace=False``, separators ``(",", ":")``), the same form as the training
  targets (:func:`pumpl_assets.core.schemas.dump_plan`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pumpl_assets.core.io import sha256_text
from pumpl_assets.core.name_guard import (
    PlanRules,
    SessionNameGuard,
    allowed_from_bitmask,
    session_block_names,
    session_main_min,
    token_texts,
)

ENGINE_KINDS: tuple[str, ...] = ("transformers", "bnb4", "bnb8", "awq", "vllm", "llamacpp")
_HF_KINDS = ("transformers", "bnb4", "bnb8", "awq")
DecodeAttention = Literal["grouped", "stock"]
DECODE_ATTENTIONS: tuple[str, ...] = ("grouped", "stock")


@dataclass
class GenerationParams:
    max_new_tokens: int = 320
    temperature: float = 0.0  # 0 → greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None
    # A served plan's balance / focus / length rules for the decode guard (grammar.request_plan_rules);
    # engines without the guard (vLLM, llama.cpp) ignore it.
    plan_rules: PlanRules | None = None


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    token_ids: list[int] = field(default_factory=list)  # completion ids (EOS excluded); extra to the contract
    seconds: float = 0.0  # this row's wall time in the batch (0 where the engine does not time rows)


@runtime_checkable
class Engine(Protocol):
    name: str  # "transformers" | "bnb4" | "bnb8" | "awq" | "vllm"
    quantization: str | None
    model_path: str
    tokenizer: Any

    def generate(
        self,
        prompts: list[str],
        params: GenerationParams | list[GenerationParams],
        json_schemas: list[dict | None] | None = None,
    ) -> list[Generation]: ...

    def stream(
        self, prompt: str, params: GenerationParams, json_schema: dict | None = None
    ) -> Iterator[str]: ...

    def close(self) -> None: ...


class EngineError(RuntimeError):
    """An engine cannot run in this environment (missing CUDA, package, or incompatible model)."""


# --------------------------------------------------------------------------------------------
# Grammar compilation (xgrammar), cached
# --------------------------------------------------------------------------------------------


def schema_key(schema: dict) -> str:
    """Cache key of a JSON schema: SHA-256 of its canonical JSON."""
    return sha256_text(json.dumps(schema, sort_keys=True, separators=(",", ":")))


@dataclass
class GrammarStats:
    compiles: int = 0
    hits: int = 0
    compile_seconds: float = 0.0
    last_compile_seconds: float = 0.0


class GrammarCache:
    """xgrammar compiler for one tokenizer + an LRU of compiled JSON-schema grammars.

    Thread-safe (serving may compile from several request threads). ``stop_token_ids``
    are the ids the grammar accepts once the JSON is complete.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int], *, max_size: int = 64):
        import xgrammar as xgr

        self.vocab_size = vocab_size
        self.stop_token_ids = list(stop_token_ids)
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_token_ids
        )
        self.compiler = xgr.GrammarCompiler(self.tokenizer_info, max_threads=2, cache_enabled=False)
        self.max_size = max_size
        self._tokenizer = tokenizer
        self._token_text: list[str] | None = None
        self.stats = GrammarStats()
        self._lru: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lru)

    def serves(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> bool:
        """Whether this cache's grammars are valid for another engine: the same vocabulary (token
        strings and ids), vocabulary size and stop tokens (a merged model keeps its base's tokenizer)."""
        return (
            vocab_size == self.vocab_size
            and list(stop_token_ids) == self.stop_token_ids
            and tokenizer.get_vocab() == self._tokenizer.get_vocab()
        )

    def get(self, schema: dict) -> Any:
        """The compiled grammar of ``schema`` (compiled once, then served from the LRU)."""
        key = schema_key(schema)
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                self.stats.hits += 1
                return self._lru[key]
        t0 = time.perf_counter()
        compiled = self.compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(",", ":"), strict_mode=True
        )
        dt = time.perf_counter() - t0
        with self._lock:
            self.stats.compiles += 1
            self.stats.compile_seconds += dt
            self.stats.last_compile_seconds = dt
            self._lru[key] = compiled
            self._lru.move_to_end(key)
            while len(self._lru) > self.max_size:
                self._lru.popitem(last=False)
        return compiled

    def matcher(self, schema: dict) -> Any:
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.get(schema))

    def name_guard(self, schema: dict, rules: PlanRules | None = None) -> SessionNameGuard | None:
        """A fresh decode guard for a served plan schema (None for any other schema): no repeats, and
        with ``rules`` the request's balance / focus / length rules (name_guard module doc)."""
        names = session_block_names(schema)
        if names is None:
            return None
        with self._lock:
            if self._token_text is None:
                self._token_text = token_texts(self._tokenizer, self.vocab_size)
        return SessionNameGuard(names, self._token_text, rules=rules, main_min=session_main_min(schema))


# --------------------------------------------------------------------------------------------
# Hugging Face engines
# --------------------------------------------------------------------------------------------


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device={device!r} requested but CUDA is not available on this machine")
    return device


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 matmuls natively (AVX512-BF16 / AMX); elsewhere bf16 is emulated."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def _resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        # bf16 on a GPU; on a CPU only where it is native: decode there is ~1.8x faster than fp32
        # (bench_decode), and the recipes train under bf16 autocast, so the model is used to it.
        if device.startswith("cuda") or cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    from pumpl_assets.core.dtypes import DTYPES, torch_dtype

    if dtype.lower() not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    return torch_dtype(dtype)


def dense_compressed_tensors(model: Any) -> int:
    """Decompress a compressed-tensors model now and give its weight-only Linears their plain forward.

    transformers leaves such a model compressed behind a hook that decompresses it on the first
    forward, and compressed-tensors replaces each quantized Linear's forward with a quantize-dequantize
    shim. Once decompressed (status ``DECOMPRESSED``) the shim skips the weight round trip, so for a
    weight-only scheme (W4A16, what ``awq_model`` writes) it computes exactly what ``nn.Linear`` does,
    plus Python work on each of the ~200 Linear calls of a decode step. Modules whose scheme quantizes
    activations keep it: there the shim is the arithmetic. Returns how many modules were unwrapped.
    Measured on the smollm2-135m AWQ folder (24 test prompts, 640 new tokens, bf16, this 2-core box):
    see README "Benchmarks".
    """
    from compressed_tensors.offload.dispatch import remove_dispatch
    from compressed_tensors.quantization import QuantizationStatus

    quantizer = getattr(model, "hf_quantizer", None)
    if getattr(model, "ct_decompress_hook", None) is not None and quantizer is not None:
        quantizer.compressor.decompress_model(model)  # what the first forward would do; removes the hook
    # Decompression also puts every module behind compressed-tensors' offload cache (a forward wrapper
    # and a parameter dict that onloads on each access); the whole model is on one device here.
    remove_dispatch(model, onload_tensors=True)
    unwrapped = 0
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or "forward" not in vars(module):
            continue
        if scheme.input_activations is not None or scheme.output_activations is not None:
            continue
        if getattr(module, "quantization_status", None) != QuantizationStatus.DECOMPRESSED:
            continue
        del module.forward  # the instance's shim; the class's own forward takes over
        unwrapped += 1
    return unwrapped


def _read_quant_config(model_path: Path) -> dict | None:
    cfg = model_path / "config.json"
    if not cfg.is_file():
        return None
    qc = json.loads(cfg.read_text(encoding="utf-8")).get("quantization_config")
    return qc if isinstance(qc, dict) else None


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for src in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list | tuple):
            ids.update(int(x) for x in eos)
    if isinstance(tokenizer.eos_token_id, int):
        ids.add(tokenizer.eos_token_id)
    # Chat models end their turn with an explicit end-of-turn token even where the
    # tokenizer's eos says otherwise (e.g. a GGUF-converted SmolLM2).
    vocab = tokenizer.get_vocab()
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>"):
        if tok in vocab:
            ids.add(int(vocab[tok]))
    if not ids:
        raise EngineError("model and tokenizer define no end-of-sequence token; cannot stop generation")
    return sorted(ids)


@dataclass
class _Row:
    index: int
    params: GenerationParams
    prompt_tokens: int
    matcher: Any = None
    guard: Any = None  # name_guard.SessionNameGuard on served plan schemas
    generator: Any = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    started: float = 0.0  # perf_counter() when the row entered the batch
    seconds: float = 0.0  # wall time from entering the batch to finishing


# Leading all-padding KV columns dropped at once in continuous batching (a copy of the cache each time).
TRIM_COLUMNS = 64


class HFEngine:
    """transformers / bnb4 / bnb8 / awq engine: one loaded model + tokenizer + grammar cache."""

    computes_loss = True  # a torch forward is available (evaluate.answer_loss)

    def __init__(
        self,
        name: str,
        model: Any,
        tokenizer: Any,
        model_path: str,
        *,
        quantization: str | None = None,
        adapter_path: str | None = None,
        growing_cache: bool = False,
    ):
        self.name = name
        self.growing_cache = growing_cache  # decode into decode_attention.growing_kv_cache()
        self.model = model
        self.tokenizer = tokenizer
        self.model_path = model_path
        self.quantization = quantization
        self.adapter_path = adapter_path
        self.device = next(model.parameters()).device
        # Compute dtype (the embedding's: quantized folders also hold packed integer tensors).
        self.dtype = str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")
        self.stop_token_ids = _stop_ids(model, tokenizer)
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_token_ids[0]
        )
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.attention = str(getattr(base.config, "_attn_implementation", None))
        self._grammars: GrammarCache | None = None
        # Timing of the last decode loop: steps, model forward seconds, grammar (mask + accept) seconds.
        self.last_stats: dict[str, float] = {}
        self._lock = threading.Lock()  # one decode loop at a time per model

    # -- grammar ---------------------------------------------------------------------------
    @property
    def grammars(self) -> GrammarCache:
        if self._grammars is None:
            self._grammars = GrammarCache(self.tokenizer, self.vocab_size, self.stop_token_ids)
        return self._grammars

    def adopt_grammars(self, cache: GrammarCache | None) -> bool:
        """Take over another engine's compiled grammars when they fit this tokenizer (evaluation decodes
        the same 60 served schemas with the base and then the merged model: ~0.26 s a compile in CI);
        False, and nothing changes, when they do not."""
        if cache is None or self._grammars is not None:
            return False
        if not cache.serves(self.tokenizer, self.vocab_size, self.stop_token_ids):
            return False
        self._grammars = cache
        return True

    # -- public API ------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[str],
        params: GenerationParams | list[GenerationParams],
        json_schemas: list[dict | None] | None = None,
        *,
        max_batch: int | None = None,
    ) -> list[Generation]:
        """Batched generation of ``prompts``: all in one batch, or with ``max_batch`` at most that many
        at once, a finished row's place taken by the next prompt (see :meth:`_decode`)."""
        rows: list[_Row] = []
        decode = (
            self._decode(prompts, params, json_schemas)
            if max_batch is None
            else self._decode(prompts, params, json_schemas, max_batch=max_batch)
        )
        for step_rows in decode:
            rows = step_rows
        return [
            Generation(
                r.text, r.prompt_tokens, len(r.tokens), r.finish_reason or "length", list(r.tokens), r.seconds
            )
            for r in rows
        ]

    def stream(self, prompt: str, params: GenerationParams, json_schema: dict | None = None) -> Iterator[str]:
        """Yield text pieces of one generation as they are decoded (joined = ``generate`` text)."""
        sent = 0
        hold = max((len(s) for s in params.stop or []), default=1) - 1
        rows: list[_Row] = []
        for rows in self._decode([prompt], params, [json_schema]):
            row = rows[0]
            text = row.text
            # Hold back a possibly incomplete UTF-8 char and a possible stop-string prefix.
            safe = len(text) if row.finish_reason else max(sent, len(text.rstrip("\ufffd")) - hold)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if rows and len(rows[0].text) > sent:
            yield rows[0].text[sent:]

    def close(self) -> None:
        import gc

        self.model = None
        self._grammars = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - best effort
            pass

    # -- decode loop -----------------------------------------------------------------------
    def _prefill(self, enc: list[list[int]], indices: list[int], stats: dict[str, float]) -> tuple[Any, ...]:
        """One forward over the prompts of rows ``indices`` (left-padded to the longest) into a fresh
        cache: (last-token logits [k, vocab] on the CPU, cache, attention mask, last positions [k, 1])."""
        import torch

        width = max(len(enc[i]) for i in indices)
        ids = torch.full((len(indices), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for j, i in enumerate(indices):
            if enc[i]:
                ids[j, width - len(enc[i]) :] = torch.tensor(enc[i], dtype=torch.long)
                mask[j, width - len(enc[i]) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache: Any = None
        if self.growing_cache:
            from pumpl_assets.core.decode_attention import growing_kv_cache

            cache = growing_kv_cache()
        t0 = time.perf_counter()
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :].float().cpu()
        stats["model_s"] += time.perf_counter() - t0
        stats["steps"] += 1
        return logits, out.past_key_values, mask, positions[:, -1:]

    def _decode(
        self,
        prompts: list[str],
        params: GenerationParams | list[GenerationParams],
        json_schemas: list[dict | None] | None,
        max_batch: int | None = None,
    ) -> Iterator[list[_Row]]:
        """Core loop; yields the row states after every step (generate drains it, stream reads it).

        ``max_batch`` None decodes every prompt in one batch. With ``max_batch`` k, at most k rows are
        in the batch at once and a row that finishes is replaced by the next waiting prompt at once
        (continuous batching): the newcomers are prefilled together and their cache rows appended to
        the batch's, left-padded (:func:`decode_attention.concat_cache_rows`). A decode step costs
        nearly the same for 7 rows as for 16 here (CPU, bf16: 70 vs 80 ms), so keeping the batch
        full instead of letting it drain to one long row roughly halves the time per token."""
        import torch

        if self.model is None:
            raise EngineError("engine is closed")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        n = len(prompts)
        if n == 0:
            yield []
            return
        enc, rows = self._prepare_rows(prompts, params, json_schemas)
        limit = n if max_batch is None else min(n, max_batch)

        import xgrammar as xgr

        from pumpl_assets.core.decode_attention import concat_cache_rows, drop_leading_columns

        bitmask = xgr.allocate_token_bitmask(limit, self.vocab_size) if any(r.matcher for r in rows) else None
        stop_ids = set(self.stop_token_ids)
        waiting = list(range(n - 1, limit - 1, -1))  # pop() admits in the given order
        stats = {
            "steps": 0.0, "model_s": 0.0, "grammar_s": 0.0, "batch": float(limit),
            "guard_banned": 0.0, "guard_fallbacks": 0.0, "guard_rule_bans": 0.0, "guard_rule_fallbacks": 0.0, "admitted_late": float(n - limit),
            "trimmed_columns": 0.0,
        }  # fmt: skip
        self.last_stats = stats
        with self._lock, torch.inference_mode():
            active = list(range(limit))  # rows in the batch, in cache order
            started = time.perf_counter()
            for i in active:
                rows[i].started = started
            logits, cache, mask, last_pos = self._prefill(enc, active, stats)
            while active:
                if logits.shape[-1] > self.vocab_size:
                    logits = logits[:, : self.vocab_size]
                t1 = time.perf_counter()
                self._constrain(logits, rows, active, bitmask, stats)
                stats["grammar_s"] += time.perf_counter() - t1
                next_tokens = [self._pick(logits[b], rows[ri]) for b, ri in enumerate(active)]
                keep: list[int] = []
                for b, ri in enumerate(active):
                    row, tok = rows[ri], next_tokens[b]
                    t2 = time.perf_counter()
                    self._advance(row, tok, stop_ids)
                    if row.matcher is not None:
                        stats["grammar_s"] += time.perf_counter() - t2
                    if row.finish_reason is None:
                        keep.append(b)
                    else:
                        row.seconds = time.perf_counter() - row.started
                guards = [r.guard for r in rows if r.guard is not None]
                stats["guard_fallbacks"] = float(sum(g.fallbacks for g in guards))
                stats["guard_rule_bans"] = float(sum(g.rule_bans for g in guards))
                stats["guard_rule_fallbacks"] = float(sum(g.rule_fallbacks for g in guards))
                yield rows
                if len(keep) < len(active):
                    if keep:
                        sel = torch.tensor(keep, dtype=torch.long)
                        cache.batch_select_indices(sel.to(self.device))
                        mask, last_pos = mask[sel], last_pos[sel]
                    next_tokens = [next_tokens[b] for b in keep]
                    active = [active[b] for b in keep]
                if active:
                    mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long)], dim=1)
                    last_pos = last_pos + 1
                    t0 = time.perf_counter()
                    out = self.model(
                        input_ids=torch.tensor(next_tokens, dtype=torch.long).unsqueeze(1).to(self.device),
                        attention_mask=mask.to(self.device),
                        position_ids=last_pos.to(self.device),
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                    cache = out.past_key_values
                    logits = out.logits[:, -1, :].float().cpu()
                    stats["model_s"] += time.perf_counter() - t0
                    stats["steps"] += 1
                if waiting and len(active) < limit:
                    admit = [waiting.pop() for _ in range(min(limit - len(active), len(waiting)))]
                    now = time.perf_counter()
                    for i in admit:
                        rows[i].started = now
                    new_logits, new_cache, new_mask, new_pos = self._prefill(enc, admit, stats)
                    if active:
                        grown = concat_cache_rows(cache, new_cache)
                        width = mask.shape[1] + grown
                        mask = torch.cat(
                            [
                                torch.nn.functional.pad(mask, (grown, 0)),
                                torch.nn.functional.pad(new_mask, (width - new_mask.shape[1], 0)),
                            ]
                        )
                        last_pos = torch.cat([last_pos, new_pos])
                        logits = torch.cat([logits, new_logits])
                    else:
                        cache, mask, last_pos, logits = new_cache, new_mask, new_pos, new_logits
                    active = active + admit
                if active:
                    # Columns that are padding for every row left (the prompts of rows that finished)
                    # only cost attention time: drop them once there are enough to be worth a copy.
                    lead = int((mask.sum(0) == 0).int().cumprod(0).sum())
                    if lead >= TRIM_COLUMNS:
                        drop_leading_columns(cache, lead)
                        mask = mask[:, lead:]
                        stats["trimmed_columns"] += lead

    def _prepare_rows(
        self,
        prompts: list[str],
        params: GenerationParams | list[GenerationParams],
        json_schemas: list[dict | None] | None,
    ) -> tuple[list[list[int]], list[_Row]]:
        """Validate a call's arguments; the prompts' token ids and one row state per prompt (grammar
        matcher and no-repeat guard for a schema, a seeded generator for sampling). Shared by every
        engine that runs this decode loop's rules."""
        import torch

        n = len(prompts)
        plist = params if isinstance(params, list) else [params] * n
        schemas = json_schemas if json_schemas is not None else [None] * n
        if len(plist) != n or len(schemas) != n:
            raise ValueError(
                f"got {n} prompts but {len(plist)} params and {len(schemas)} json_schemas; lengths must match"
            )
        for p in plist:
            if p.max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be >= 1, got {p.max_new_tokens}")
            if p.temperature < 0 or not (0 < p.top_p <= 1):
                raise ValueError(
                    f"temperature must be >= 0 and 0 < top_p <= 1, got {p.temperature}, {p.top_p}"
                )
        enc = [self.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        rows = [_Row(index=i, params=plist[i], prompt_tokens=len(enc[i])) for i in range(n)]
        for i, s in enumerate(schemas):
            if s is not None:
                rows[i].matcher = self.grammars.matcher(s)
                rows[i].guard = self.grammars.name_guard(s, plist[i].plan_rules)
            if plist[i].temperature > 0:
                g = torch.Generator(device="cpu")
                seed = plist[i].seed
                g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ())))
                rows[i].generator = g
        return enc, rows

    def _constrain(
        self, logits: Any, rows: list[_Row], active: list[int], bitmask: Any, stats: dict[str, float]
    ) -> None:
        """Apply each constrained row's grammar mask, then its no-repeat guard, to ``logits`` in place
        (``logits[b]`` belongs to ``rows[active[b]]``)."""
        import xgrammar as xgr

        constrained = [b for b, ri in enumerate(active) if rows[ri].matcher is not None]
        if not constrained or bitmask is None:
            return
        for b in constrained:
            rows[active[b]].matcher.fill_next_token_bitmask(bitmask, b)
        xgr.apply_token_bitmask_inplace(logits, bitmask[: len(active)], indices=constrained)
        for b in constrained:
            row = rows[active[b]]
            if row.guard is not None:
                ban = row.guard.banned(
                    row.text, lambda b=b: allowed_from_bitmask(bitmask[b], self.vocab_size)
                )
                if ban:
                    logits[b, ban] = float("-inf")
                    stats["guard_banned"] = stats.get("guard_banned", 0.0) + len(ban)

    @staticmethod
    def _pick(logits: Any, row: _Row) -> int:
        import torch

        p = row.params
        if p.temperature < 1e-6:  # tiny temperatures overflow the logits: treat as greedy
            return int(torch.argmax(logits))
        scaled = logits / p.temperature
        probs = torch.softmax(scaled, dim=-1)
        if p.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cum = sorted_p.cumsum(-1)
            cut = cum - sorted_p > p.top_p  # keep the smallest prefix reaching top_p
            sorted_p[cut] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _advance(self, row: _Row, tok: int, stop_ids: set[int]) -> None:
        if row.matcher is not None:
            if not row.matcher.accept_token(tok):
                # Cannot happen with the mask applied; fail loudly rather than emit invalid JSON.
                raise EngineError(f"grammar rejected token {tok} in row {row.index}")
            if row.matcher.is_terminated():
                row.finish_reason = "stop"
                return
        if tok in stop_ids and row.matcher is None:
            row.finish_reason = "stop"
            return
        row.tokens.append(tok)
        row.text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        if row.matcher is None and row.params.stop:
            hits = [row.text.find(s) for s in row.params.stop if s and s in row.text]
            if hits:
                row.text = row.text[: min(hits)]
                row.finish_reason = "stop"
                return
        if len(row.tokens) >= row.params.max_new_tokens:
            row.finish_reason = "length"


def _load_hf(
    kind: str,
    path: Path,
    *,
    adapter_path: Path | None,
    device: str,
    dtype: str,
    decode_attention: DecodeAttention = "grouped",
) -> HFEngine:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    qc = _read_quant_config(path)
    qmethod = (qc or {}).get("quant_method")
    dev = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, dev)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    quantization: str | None = None
    if kind in ("bnb4", "bnb8"):
        if qmethod:
            raise ValueError(
                f"engine {kind!r} quantizes a full-precision model on load, but {path} is already "
                f"quantized ({qmethod}); use engine 'awq' for compressed-tensors/AWQ folders"
            )
        from transformers import BitsAndBytesConfig

        if kind == "bnb4":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype
            )
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        quantization = kind
    elif kind == "awq":
        if qmethod not in ("compressed-tensors", "awq"):
            raise ValueError(
                f"engine 'awq' needs a compressed-tensors/AWQ folder (config.json quantization_config), "
                f"but {path} has quant_method={qmethod!r}"
            )
        quantization = "awq"
    elif qmethod:
        quantization = str(qmethod)
    kwargs["device_map"] = {"": dev}
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if qmethod == "compressed-tensors":
        dense_compressed_tensors(model)
    growing_cache = decode_attention == "grouped" and dev == "cpu"
    if growing_cache:
        from pumpl_assets.core.decode_attention import use_grouped_decode_attention

        use_grouped_decode_attention(model)  # before PEFT wraps it; a no-op for non-GQA models
    if adapter_path is not None:
        from peft import PeftModel

        from pumpl_assets.core.training.base import patch_peft_torchao

        patch_peft_torchao()  # peft 0.21 refuses to build LoRA layers next to torchao 0.15

        if not (Path(adapter_path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter_path} is not a PEFT adapter folder (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False)
    model.eval()
    return HFEngine(
        kind,
        model,
        tokenizer,
        str(path),
        quantization=quantization,
        adapter_path=str(adapter_path) if adapter_path else None,
        growing_cache=growing_cache,
    )


# --------------------------------------------------------------------------------------------
# vLLM engine (GPU only)
# --------------------------------------------------------------------------------------------


class VLLMEngine:
    """vLLM ``LLM`` + ``SamplingParams``; json schemas go through structured outputs (xgrammar)."""

    name = "vllm"

    def __init__(self, model_path: Path, *, adapter_path: Path | None, dtype: str):
        import torch

        if not torch.cuda.is_available():
            raise EngineError("engine 'vllm' needs a CUDA GPU; use 'transformers' (or bnb4/bnb8/awq) on CPU")
        try:
            import vllm
        except ImportError as exc:
            raise EngineError(
                "engine 'vllm' needs the vllm package (`pip install vllm`) on a GPU machine"
            ) from exc
        self.model_path = str(model_path)
        qc = _read_quant_config(model_path)
        self.quantization = (qc or {}).get("quant_method")
        self.adapter_path = str(adapter_path) if adapter_path else None
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=self.model_path,
            dtype="auto" if dtype == "auto" else dtype,
            enable_lora=adapter_path is not None,
            gpu_memory_utilization=0.8,
            seed=0,
        )
        self.tokenizer = self.llm.get_tokenizer()
        vocab = self.tokenizer.get_vocab()
        self._extra_stop_ids = [int(vocab[t]) for t in ("<|im_end|>", "<|eot_id|>") if t in vocab]
        self._lora = None
        if adapter_path is not None:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest("adapter", 1, str(adapter_path))

    def _sampling(self, p: GenerationParams, schema: dict | None) -> Any:
        kwargs: dict[str, Any] = {
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "seed": p.seed,
            "stop": None if schema is not None else p.stop,
        }
        if schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            # Compact JSON like the training targets (xgrammar backend: any_whitespace=False).
            kwargs["structured_outputs"] = StructuredOutputsParams(json=schema, disable_any_whitespace=True)
        if self._extra_stop_ids:
            kwargs["stop_token_ids"] = self._extra_stop_ids
        return self._vllm.SamplingParams(**kwargs)

    def generate(
        self,
        prompts: list[str],
        params: GenerationParams | list[GenerationParams],
        json_schemas: list[dict | None] | None = None,
    ) -> list[Generation]:
        n = len(prompts)
        plist = params if isinstance(params, list) else [params] * n
        schemas = json_schemas if json_schemas is not None else [None] * n
        if len(plist) != n or len(schemas) != n:
            raise ValueError(f"got {n} prompts but {len(plist)} params and {len(schemas)} json_schemas")
        sps = [self._sampling(p, s) for p, s in zip(plist, schemas, strict=True)]
        token_prompts = [
            {"prompt_token_ids": self.tokenizer(p, add_special_tokens=False).input_ids} for p in prompts
        ]
        outs = self.llm.generate(token_prompts, sps, lora_request=self._lora, use_tqdm=False)
        result = []
        for o in outs:
            c = o.outputs[0]
            result.append(
                Generation(
                    text=c.text,
                    prompt_tokens=len(o.prompt_token_ids or []),
                    completion_tokens=len(c.token_ids),
                    finish_reason="length" if c.finish_reason == "length" else "stop",
                    token_ids=list(c.token_ids),
                )
            )
        return result

    def stream(self, prompt: str, params: GenerationParams, json_schema: dict | None = None) -> Iterator[str]:
        # The offline LLM API has no token streaming; yield the whole answer as one piece.
        yield self.generate([prompt], params, [json_schema])[0].text

    def close(self) -> None:
        import gc

        self.llm = None
        gc.collect()


# --------------------------------------------------------------------------------------------


def load_engine(
    kind: str,
    model_path: str | Path,
    *,
    adapter_path: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    decode_attention: DecodeAttention = "grouped",
    threads: int | None = None,
) -> Engine:
    """Load ``model_path`` (a Hugging Face folder; for ``llamacpp`` a GGUF file or a folder
    holding ``model.gguf`` and the HF tokenizer files) behind engine ``kind``.

    Raises ``ValueError`` for an unknown kind or an incompatible model (bnb on an already
    quantized folder, awq on a full-precision one), :class:`EngineError` where the
    environment cannot run the engine (vllm without CUDA or without the package).
    ``decode_attention`` picks the CPU decode-step attention of the Hugging Face engines.
    ``threads`` sets llama.cpp's decode threads (the torch engines follow ``torch.set_num_threads``).
    """
    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine {kind!r}; supported engines: {', '.join(ENGINE_KINDS)}")
    if decode_attention not in DECODE_ATTENTIONS:
        raise ValueError(
            f"unknown decode_attention {decode_attention!r}; supported: {', '.join(DECODE_ATTENTIONS)}"
        )
    path = Path(model_path)
    adapter = Path(adapter_path) if adapter_path is not None else None
    if kind == "vllm":
        return VLLMEngine(path, adapter_path=adapter, dtype=dtype)
    if kind == "llamacpp":
        if adapter is not None:
            raise ValueError(
                "engine 'llamacpp' runs a merged GGUF; it takes no adapter (merge, then export_gguf)"
            )
        if device not in ("auto", "cpu"):
            raise ValueError(f"engine 'llamacpp' runs on the CPU here; got device={device!r}")
        if dtype != "auto":
            raise ValueError(f"engine 'llamacpp': the GGUF file fixes the weight type; got dtype={dtype!r}")
        from pumpl_assets.core.engine_llamacpp import LlamaCppEngine

        return LlamaCppEngine(path, n_threads=threads)
    return _load_hf(
        kind, path, adapter_path=adapter, device=device, dtype=dtype, decode_attention=decode_attention
    )
