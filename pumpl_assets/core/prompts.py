"""Prompt formatting, used by training AND serving (one module, so no train/serve skew).

* :func:`request_to_prompt` renders a :class:`RequestSpec` as the user message;
  :func:`prompt_to_request` parses it back (serving reads equipment and level from
  the prompt to build the request-aware grammar).
* :func:`render_prompt` turns (system, user) into the exact text the model sees
  before its answer, in the partition's prompt style; :func:`render_example` gives
  the prompt and the full text of a training example, so the loss can be masked to
  the assistant's answer.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from pumpl_assets.core import settings
from pumpl_assets.core.schemas import EQUIPMENT, FOCUSES, GOALS, LEVELS, LIMITATIONS, RequestSpec


class ChatTokenizer(Protocol):
    eos_token: Any
    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def request_to_prompt(req: RequestSpec) -> str:
    """Compact, fixed-layout user message (`` Focus: core.`` appended only when a focus is set).

    The parser below and :func:`pumpl_assets.core.request_text.parse_request` read exactly this layout.
    """
    lim = ", ".join(req.limitations) if req.limitations else "none"
    focus = f" Focus: {req.focus}." if req.focus is not None else ""
    return (
        f"Goal: {req.goal}. Time: {req.minutes} min. Level: {req.level}. "
        f"Equipment: {', '.join(req.equipment)}. Days/week: {req.days_per_week}. Limitations: {lim}.{focus}"
    )


_FIELD = {
    "goal": re.compile(r"goal\s*:\s*([a-z_ ]+?)\s*(?:\.|$|\n)", re.I),
    "minutes": re.compile(r"(?:time|minutes)\s*:\s*(\d{1,3})", re.I),
    "level": re.compile(r"level\s*:\s*([a-z]+)", re.I),
    "equipment": re.compile(r"equipment\s*:\s*([^.\n]*)", re.I),
    "days": re.compile(r"days(?:/| per )week\s*:\s*(\d)", re.I),
    "limitations": re.compile(r"limitations\s*:\s*([^.\n]*)", re.I),
    "focus": re.compile(r"focus\s*:\s*([a-z_]+)", re.I),
}


def prompt_to_request(text: str) -> RequestSpec | None:
    """Best-effort parse of a user prompt in :func:`request_to_prompt`'s layout.

    Returns None when the text does not carry a recognisable request (free-form
    prompts are still served, just without a request-aware grammar).
    """
    found: dict[str, Any] = {}
    m = _FIELD["goal"].search(text)
    if m and m.group(1).strip().lower().replace(" ", "_") in GOALS:
        found["goal"] = m.group(1).strip().lower().replace(" ", "_")
    m = _FIELD["minutes"].search(text)
    if m:
        found["minutes"] = int(m.group(1))
    m = _FIELD["level"].search(text)
    if m and m.group(1).lower() in LEVELS:
        found["level"] = m.group(1).lower()
    m = _FIELD["equipment"].search(text)
    if m:
        items = [x.strip().lower() for x in m.group(1).split(",")]
        found["equipment"] = [x for x in items if x in EQUIPMENT] or ["body only"]
    m = _FIELD["days"].search(text)
    if m:
        found["days_per_week"] = int(m.group(1))
    m = _FIELD["limitations"].search(text)
    if m:
        found["limitations"] = [
            x.strip().lower() for x in m.group(1).split(",") if x.strip().lower() in LIMITATIONS
        ]
    m = _FIELD["focus"].search(text)
    if m and m.group(1).lower() in FOCUSES:
        found["focus"] = m.group(1).lower()
    if not {"level", "equipment"} <= found.keys():
        return None
    found.setdefault("goal", "general_fitness")
    found.setdefault("minutes", 30)
    found.setdefault("days_per_week", 3)
    try:
        return RequestSpec.model_validate(found)
    except ValueError:
        return None


def resolve_style(spec_style: str, override: str | None = None) -> str:
    """``PUMPL_PROMPT_STYLE`` (or an explicit override) wins over the catalogue unless it is ``auto``."""
    style = override or settings.prompt_style()
    return spec_style if style == "auto" else style


def _mistral_inst(system: str | None, user: str) -> str:
    # Mistral v0.3 has no system role: the system text leads the first instruction.
    body = f"{system}\n\n{user}" if system else user
    return f"<s>[INST] {body} [/INST]"


def render_prompt(
    tokenizer: ChatTokenizer,
    user: str,
    *,
    system: str | None = None,
    style: str = "chat_template",
) -> str:
    """The exact text before the model's answer (generation prompt included)."""
    system = settings.system_prompt() if system is None else system
    if style == "mistral_inst":
        return _mistral_inst(system or None, user)
    if style != "chat_template":
        raise ValueError(f"unknown prompt style {style!r}; use chat_template or mistral_inst")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("tokenizer has no chat template; set PUMPL_PROMPT_STYLE=mistral_inst or add one")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


_SENTINEL = "\u2063PUMPL_ANSWER\u2063"


def answer_suffix(tokenizer: ChatTokenizer, style: str) -> str:
    """What closes an assistant turn in this style (the model must learn to stop there).

    Read from the chat template itself (e.g. ``<|im_end|>`` for ChatML), not from
    ``eos_token``, which some converted tokenizers set to a different token.
    """
    if style == "mistral_inst":
        return "</s>"
    if getattr(tokenizer, "chat_template", None):
        text = str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}],
                tokenize=False,
            )
        )
        if _SENTINEL in text:
            tail = text.split(_SENTINEL, 1)[1]
            return tail.rstrip("\n") or str(tokenizer.eos_token or "")
    eos = tokenizer.eos_token
    return str(eos) if eos else ""


def render_example(
    tokenizer: ChatTokenizer,
    user: str,
    answer: str,
    *,
    system: str | None = None,
    style: str = "chat_template",
) -> tuple[str, str]:
    """(prompt, prompt + answer + end-of-turn) for a training example; loss goes on the tail only."""
    prompt = render_prompt(tokenizer, user, system=system, style=style)
    return prompt, prompt + answer + answer_suffix(tokenizer, style)
