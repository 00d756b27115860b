"""Training data: render, tokenize, mask, pack, batch.

Choices and assumptions:

* Rendering uses :func:`pumpl_assets.core.prompts.render_example`, the module serving uses.
  The prompt and the answer (+ end-of-turn) are tokenized SEPARATELY and concatenated, with
  ``add_special_tokens=False`` (the prompt style already contains BOS / role tokens). That is
  exactly the token sequence the model sees at generation time (prompt ids, then generated
  ids), so there is no BPE merge across the prompt/answer boundary and the loss mask is exact.
* Loss only on the answer: labels are -100 on every prompt token, the answer's ids (and the
  end-of-turn token, so the model learns to stop) elsewhere.
* Decision weighting (``TrainingConfig.decision_weight`` > 1): answer tokens that overlap the value
  of a decision field (``DECISION_FIELDS``) get that weight, the rest 1, and the step's loss is the
  weighted mean; character offsets from the (fast) tokenizer place the values. Validation loss
  stays the plain mean, comparable across recipes and with the base model.
* An example longer than ``seq_len`` is never truncated (a cut answer teaches the model not to
  finish); it is skipped, and returned with a reason so the caller can count/report it.
* Packing (``cfg.packing``): whole examples are placed greedily (first fit, in shuffled order)
  into rows of at most ``seq_len`` tokens; an example is never split across rows. Position ids
  restart at 0 for every example and no attention mask is passed: transformers then derives a
  block-diagonal causal mask from the position ids, so packed examples cannot attend to each
  other (verified in tests: packed logits equal unpacked ones). Rows of a batch are right-padded
  to the longest row; padding forms its own segment with labels -100.
* Without packing, each row is one example, right-padded to the batch's longest example, with
  an attention mask. Batches are length-grouped (sorted within shuffled chunks) to cut padding.
* The batch order is a pure function of (seed, epoch): a resumed run regenerates it and skips
  the micro-batches already consumed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pumpl_assets.core.prompts import render_example
from pumpl_assets.core.schemas import TrainingExample

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100

# Plan fields whose values a request decides (schemas.WorkoutPlanResponse): the split for the days,
# the session's size, and every prescription number.
DECISION_FIELDS: tuple[str, ...] = (
    "total_minutes",
    "days_per_week",
    "split",
    "day",
    "main_count",
    "sets",
    "reps",
    "rest_s",
    "work_s",
)
_DECISION_VALUE = re.compile(r'"(?:' + "|".join(DECISION_FIELDS) + r')"\s*:\s*("[^"]*"|-?[0-9.]+)')


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    n_prompt: int
    # Per-token loss weights (prompt tokens 0), or None for the plain mean.
    weights: list[float] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_answer(self) -> int:
        return len(self.input_ids) - self.n_prompt


def example_system(ex: TrainingExample, system_prompt: str | None) -> str | None:
    """The system text for ``ex``: an explicit ``system_prompt`` wins (``""`` = none); with ``None`` the
    example's own messages are used as they are (its system message, or no system turn)."""
    if system_prompt is not None:
        return system_prompt
    first = ex.messages[0]
    return first.content if first.role == "system" else ""


def render_texts(
    tokenizer: Any, ex: TrainingExample, *, style: str, system_prompt: str | None
) -> tuple[str, str]:
    """(prompt, answer + end-of-turn) exactly as serving renders the prompt."""
    prompt, full = render_example(
        tokenizer, ex.user, ex.assistant, system=example_system(ex, system_prompt), style=style
    )
    if not full.startswith(prompt):  # render_example guarantees this; keep the mask honest if it changes
        raise ValueError("render_example's full text does not start with its prompt")
    return prompt, full[len(prompt) :]


def decision_spans(answer: str) -> list[tuple[int, int]]:
    """Character spans of the decision fields' values in an answer (JSON as the model writes it)."""
    return [m.span(1) for m in _DECISION_VALUE.finditer(answer)]


def answer_weights(tokenizer: Any, answer: str, n_ids: int, decision_weight: float) -> list[float]:
    """``decision_weight`` for each answer token overlapping a decision value, else 1.0."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("decision_weight needs a fast tokenizer (character offsets); this one is not")
    offsets = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) != n_ids:
        raise ValueError(f"offset mapping has {len(offsets)} entries for {n_ids} answer tokens")
    spans = decision_spans(answer)
    return [decision_weight if any(a < e and s < b for s, e in spans) else 1.0 for a, b in offsets]


def tokenize_example(
    tokenizer: Any,
    ex: TrainingExample,
    *,
    style: str,
    system_prompt: str | None,
    decision_weight: float = 1.0,
) -> TokenizedExample:
    prompt, answer = render_texts(tokenizer, ex, style=style, system_prompt=system_prompt)
    p_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    a_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if not a_ids:
        raise ValueError("example has an empty answer")
    weights = (
        [0.0] * len(p_ids) + answer_weights(tokenizer, answer, len(a_ids), decision_weight)
        if decision_weight != 1.0
        else None
    )
    return TokenizedExample(
        input_ids=p_ids + a_ids,
        labels=[IGNORE_INDEX] * len(p_ids) + a_ids,
        n_prompt=len(p_ids),
        weights=weights,
    )


def tokenize_examples(
    tokenizer: Any,
    examples: list[TrainingExample],
    *,
    style: str,
    system_prompt: str | None,
    seq_len: int,
    decision_weight: float = 1.0,
) -> tuple[list[TokenizedExample], list[tuple[int, str]]]:
    """Tokenize all examples; returns (kept, skipped) where skipped is [(index, reason)]."""
    kept: list[TokenizedExample] = []
    skipped: list[tuple[int, str]] = []
    for i, ex in enumerate(examples):
        tok = tokenize_example(
            tokenizer, ex, style=style, system_prompt=system_prompt, decision_weight=decision_weight
        )
        if len(tok) > seq_len:
            skipped.append((i, f"{len(tok)} tokens > seq_len {seq_len}"))
            continue
        kept.append(tok)
    return kept, skipped


def pack(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Greedy first-fit of whole items (in the given order) into bins of ``seq_len``; returns index lists."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        if n > seq_len:
            raise ValueError(
                f"item {i} has {n} tokens > seq_len {seq_len}; it cannot be packed without cutting it"
            )
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(seq_len - n)
    return rows


def epoch_rows(
    n_examples: int, lengths: list[int], *, packing: bool, seq_len: int, batch_size: int, seed: int
) -> list[list[int]]:
    """Rows (lists of example indices) of one epoch, in training order."""
    rng = random.Random(seed)
    order = list(range(n_examples))
    rng.shuffle(order)
    if packing:
        packed = [[order[j] for j in row] for row in pack([lengths[i] for i in order], seq_len)]
        rng.shuffle(packed)
        return packed
    # Length grouping: sort within chunks of 32 batches, then shuffle the batches.
    chunk = batch_size * 32
    rows: list[list[int]] = []
    batches: list[list[list[int]]] = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        for start in range(0, len(part), batch_size):
            batches.append([[i] for i in part[start : start + batch_size]])
    rng.shuffle(batches)
    for batch in batches:
        rows.extend(batch)
    return rows


def micro_batches(
    examples: list[TokenizedExample],
    *,
    packing: bool,
    seq_len: int,
    batch_size: int,
    seed: int,
) -> Iterator[list[list[int]]]:
    """Endless stream of micro-batches (lists of rows), epoch after epoch, deterministic in ``seed``."""
    if not examples:
        raise ValueError("no training examples left to batch")
    lengths = [len(e) for e in examples]
    epoch = 0
    while True:
        rows = epoch_rows(
            len(examples),
            lengths,
            packing=packing,
            seq_len=seq_len,
            batch_size=batch_size,
            seed=seed * 1_000_003 + epoch,
        )
        for b in range(0, len(rows), batch_size):
            yield rows[b : b + batch_size]
        epoch += 1


def batches_per_epoch(
    examples: list[TokenizedExample], *, packing: bool, seq_len: int, batch_size: int, seed: int
) -> int:
    lengths = [len(e) for e in examples]
    rows = epoch_rows(
        len(examples), lengths, packing=packing, seq_len=seq_len, batch_size=batch_size, seed=seed * 1_000_003
    )
    return -(-len(rows) // batch_size)


def collate(
    examples: list[TokenizedExample],
    rows: list[list[int]],
    *,
    pad_id: int,
    packing: bool,
) -> dict[str, torch.Tensor]:
    """Tensors for one micro-batch.

    Packed: ``input_ids``, ``labels``, ``position_ids`` (restarting per example; no attention
    mask). Unpacked: ``input_ids``, ``labels``, ``attention_mask`` (right padding). Weighted
    examples add ``loss_weights`` (0 on prompt and padding), which is not a model input.
    """
    import torch

    seqs_ids: list[list[int]] = []
    seqs_lab: list[list[int]] = []
    seqs_pos: list[list[int]] = []
    for row in rows:
        ids: list[int] = []
        lab: list[int] = []
        pos: list[int] = []
        for i in row:
            ex = examples[i]
            ids += ex.input_ids
            lab += ex.labels
            pos += list(range(len(ex)))
        seqs_ids.append(ids)
        seqs_lab.append(lab)
        seqs_pos.append(pos)
    width = max(len(s) for s in seqs_ids)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    out: dict[str, torch.Tensor] = {}
    if packing:
        # Padding continues as its own segment (positions 0..k), so it never joins a real example.
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, lab, pos) in enumerate(zip(seqs_ids, seqs_lab, seqs_pos, strict=True)):
            n = len(ids)
            input_ids[r, :n] = torch.tensor(ids)
            labels[r, :n] = torch.tensor(lab)
            position_ids[r, :n] = torch.tensor(pos)
            position_ids[r, n:] = torch.arange(width - n)
        out["position_ids"] = position_ids
    else:
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, lab) in enumerate(zip(seqs_ids, seqs_lab, strict=True)):
            n = len(ids)
            input_ids[r, :n] = torch.tensor(ids)
            labels[r, :n] = torch.tensor(lab)
            attention_mask[r, :n] = 1
        out["attention_mask"] = attention_mask
    out["input_ids"] = input_ids
    out["labels"] = labels
    if any(examples[i].weights is not None for row in rows for i in row):
        weights = torch.zeros((len(rows), width))
        for r, row in enumerate(rows):
            w = [x for i in row for x in _weights_of(examples[i])]
            weights[r, : len(w)] = torch.tensor(w)
        out["loss_weights"] = weights
    return out


def _weights_of(ex: TokenizedExample) -> list[float]:
    return ex.weights if ex.weights is not None else [0.0] * ex.n_prompt + [1.0] * ex.n_answer


def answer_weight(examples: list[TokenizedExample], rows: list[list[int]]) -> float:
    """The loss denominator of ``rows``: the sum of answer-token weights (the answer token count
    when nothing is weighted)."""
    return float(sum(sum(_weights_of(examples[i])) for row in rows for i in row))


def real_tokens(examples: list[TokenizedExample], rows: list[list[int]]) -> int:
    return sum(len(examples[i]) for row in rows for i in row)
