"""Export a merged Hugging Face model to GGUF files for the llama.cpp engine (Dagster-free).

:func:`export_gguf` runs llama.cpp's own converter (``convert_hf_to_gguf.py``, placed under
``.cache/llamacpp/`` by ``scripts/llamacpp.sh``; ``PUMPL_GGUF_CONVERTER`` overrides) to an
f16 or f32 base GGUF, then quantizes it with ``llama_cpp.llama_model_quantize``. The output
folder is written whole and renamed into place (:func:`pumpl_assets.core.io.atomic_path`),
so a killed export never leaves half a folder. It holds::

    model-f16.gguf (or model-f32.gguf)   the converter's output
    model-q8_0.gguf, model-q4_k_m.gguf   one per requested quant
    model.gguf                           hard link to the first quant (the engine's default file;
                                         ``link_default=False`` leaves it out and the record's
                                         ``default`` names the file instead)
    tokenizer.json, tokenizer_config.json, config.json, ...   the HF tokenizer files, so the engine
                                                             tokenizes exactly like the HF engines
    pumpl_gguf.json                      the export record (:class:`GGUFExport` as JSON)

k-quants need rows whose length is a multiple of 256. SmolLM2-135M's hidden size 576 is not,
so llama.cpp quantizes those tensors with its per-tensor fallback (q4_K -> q5_0, q6_K -> q8_0)
and only the 1536-wide ``ffn_down`` rows get real k-quants; ``tensor_types`` in the record
shows the mix actually written.

The project's SmolLM2 tokenizer (re-serialized by transformers from the shipped GGUF) is a
byte-level BPE whose ``tokenizer.json`` says ``byte_fallback: true`` with a SentencePiece-style
decoder. The converter takes that for a Llama SentencePiece vocab and writes
``tokenizer.ggml.model = llama``; llama.cpp then tokenizes differently and even aborts
(``byte_to_token``) on some text. The converter is therefore given a staged copy of the folder
whose ``tokenizer.json`` says what the tokenizer really is (no byte fallback, ByteLevel decoder),
and it writes ``gpt2`` / ``smollm`` like the shipped GGUF. Token ids are unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pumpl_assets.core.io import atomic_path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONVERTER = REPO_ROOT / ".cache" / "llamacpp" / "convert_hf_to_gguf.py"
EXPORT_MARKER = "pumpl_gguf.json"
BASE_TYPES = ("f16", "f32")
# llama_ftype values (llama.h); names as llama-quantize spells them, lower case.
QUANT_FTYPES: dict[str, int] = {
    "q4_0": 2,
    "q4_1": 3,
    "q8_0": 7,
    "q5_0": 8,
    "q5_1": 9,
    "q4_k_s": 14,
    "q4_k_m": 15,
    "q5_k_s": 16,
    "q5_k_m": 17,
    "q6_k": 18,
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "config.json",
    "vocab.json",
    "merges.txt",
)


class GGUFExportError(RuntimeError):
    """The GGUF export cannot run here (converter or llama_cpp missing) or failed."""


@dataclass
class GGUFFile:
    quant: str  # "f16" | "f32" | a QUANT_FTYPES key
    path: str
    bytes: int
    ratio: float  # bytes / merged safetensors bytes
    seconds: float
    tensor_types: dict[str, int] = field(default_factory=dict)  # ggml type name -> tensor count


@dataclass
class GGUFExport:
    out_dir: str
    source_dir: str
    safetensors_bytes: int
    tokenizer_patched: bool  # see the module docstring
    base: GGUFFile
    quants: dict[str, GGUFFile]
    wall_seconds: float
    default: str = "model.gguf"  # the file engine `llamacpp` loads from this folder
    base_kept: bool = True  # False: the converter's f16/f32 file was removed after quantizing

    @property
    def default_path(self) -> Path:
        return Path(self.out_dir) / self.default

    def path(self, quant: str) -> Path:
        if quant == self.base.quant:
            return Path(self.base.path)
        if quant not in self.quants:
            raise KeyError(f"quant {quant!r} not exported; have {self.base.quant}, {', '.join(self.quants)}")
        return Path(self.quants[quant].path)

    def to_dict(self) -> dict:
        return asdict(self)


def converter_path() -> Path:
    env = os.environ.get("PUMPL_GGUF_CONVERTER")
    return Path(env) if env else DEFAULT_CONVERTER


def _require_llama_cpp() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        raise GGUFExportError(
            "GGUF export needs the llama-cpp-python package (run scripts/llamacpp.sh)"
        ) from exc


def _safetensors_bytes(merged_dir: Path) -> int:
    files = sorted(merged_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{merged_dir} holds no *.safetensors weights (not a merged HF folder?)")
    return sum(f.stat().st_size for f in files)


def tensor_types(path: Path) -> dict[str, int]:
    """Count of tensors per ggml type in a GGUF file (to show what a quant really wrote)."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        name = t.tensor_type.name.lower()
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _is_bytelevel(pre: dict | None) -> bool:
    if not isinstance(pre, dict):
        return False
    if pre.get("type") == "ByteLevel":
        return True
    return any(_is_bytelevel(p) for p in pre.get("pretokenizers") or [])


def fixed_tokenizer_json(merged_dir: Path) -> dict | None:
    """The tokenizer.json to show the converter, or None when the folder's own is fine."""
    f = merged_dir / "tokenizer.json"
    if not f.is_file():
        return None
    data = json.loads(f.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if (
        model.get("type") != "BPE"
        or not model.get("byte_fallback")
        or not _is_bytelevel(data.get("pre_tokenizer"))
    ):
        return None
    # A byte-level BPE covers every byte with a token, so byte fallback never fires: same ids.
    model["byte_fallback"] = False
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return data


def convert_hf(merged_dir: Path, outfile: Path, outtype: str = "f16") -> bool:
    """Run llama.cpp's converter on ``merged_dir`` (subprocess; it imports its own gguf-py tree).

    Returns whether the tokenizer.json had to be fixed for it (module docstring).
    """
    conv = converter_path()
    if not conv.is_file():
        raise GGUFExportError(
            f"llama.cpp converter not found at {conv}; run scripts/llamacpp.sh "
            "(or set PUMPL_GGUF_CONVERTER to a convert_hf_to_gguf.py)"
        )
    if outtype not in BASE_TYPES:
        raise ValueError(f"base GGUF type must be one of {BASE_TYPES}, got {outtype!r}")
    fixed = fixed_tokenizer_json(merged_dir)
    with tempfile.TemporaryDirectory(prefix="pumpl-gguf-src-") as stage:
        src = merged_dir
        if fixed is not None:
            # The source folder stays untouched: links to its files + the fixed tokenizer.json.
            src = Path(stage)
            for f in merged_dir.iterdir():
                if f.name != "tokenizer.json":
                    (src / f.name).symlink_to(f.resolve())
            (src / "tokenizer.json").write_text(json.dumps(fixed), encoding="utf-8")
        cmd = [sys.executable, str(conv), str(src), "--outtype", outtype, "--outfile", str(outfile)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not outfile.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise GGUFExportError(f"convert_hf_to_gguf.py failed on {merged_dir} (rc={proc.returncode}):\n{tail}")
    return fixed is not None


def quantize(src: Path, dst: Path, quant: str, *, threads: int | None = None) -> None:
    """Quantize a GGUF with llama.cpp (``llama_model_quantize``)."""
    import ctypes

    import llama_cpp
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # llama.cpp logs a line per tensor otherwise (warnings included)
    if quant not in QUANT_FTYPES:
        raise ValueError(f"unknown quant {quant!r}; supported: {', '.join(QUANT_FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    params.nthread = threads or (os.cpu_count() or 1)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise GGUFExportError(f"llama_model_quantize({src.name} -> {quant}) failed with code {rc}")


def export_gguf(
    merged_dir: Path,
    out_dir: Path,
    quants: tuple[str, ...] | list[str] = ("q8_0", "q4_k_m"),
    *,
    base_type: str = "f16",
    threads: int | None = None,
    keep_base: bool = True,
    link_default: bool = True,
) -> GGUFExport:
    """Convert ``merged_dir`` (a merged HF folder) to GGUF files in ``out_dir`` (replaced whole).

    ``base_type`` is the converter's output (``f16``; ``f32`` for exact comparisons on tiny
    models). ``model.gguf`` links to the first quant, or to the base file when ``quants`` is empty.
    ``keep_base=False`` drops the converter's file once the quants exist, and ``link_default=False``
    writes no ``model.gguf`` link (the record's ``default`` names the first quant's file): what a
    registry copies, which would store a hard link as a second full file.
    """
    if not keep_base and not quants:
        raise ValueError("keep_base=False needs at least one quant (nothing would be left to serve)")
    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    if not (merged_dir / "config.json").is_file():
        raise FileNotFoundError(f"{merged_dir} is not a Hugging Face model folder (no config.json)")
    for q in quants:
        if q not in QUANT_FTYPES:
            raise ValueError(f"unknown quant {q!r}; supported: {', '.join(QUANT_FTYPES)}")
    if base_type not in BASE_TYPES:
        raise ValueError(f"base_type must be one of {BASE_TYPES}, got {base_type!r}")
    _require_llama_cpp()
    st_bytes = _safetensors_bytes(merged_dir)
    t_all = time.perf_counter()

    def record(quant: str, tmp_file: Path, final_dir: Path, seconds: float) -> GGUFFile:
        size = tmp_file.stat().st_size
        return GGUFFile(
            quant=quant,
            path=str(final_dir / tmp_file.name),
            bytes=size,
            ratio=round(size / st_bytes, 4),
            seconds=round(seconds, 2),
            tensor_types=tensor_types(tmp_file),
        )

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        t0 = time.perf_counter()
        base_file = tmp / f"model-{base_type}.gguf"
        patched = convert_hf(merged_dir, base_file, base_type)
        base = record(base_type, base_file, out_dir, time.perf_counter() - t0)
        done: dict[str, GGUFFile] = {}
        for q in quants:
            t0 = time.perf_counter()
            qfile = tmp / f"model-{q}.gguf"
            quantize(base_file, qfile, q, threads=threads)
            done[q] = record(q, qfile, out_dir, time.perf_counter() - t0)
        first = tmp / (f"model-{quants[0]}.gguf" if quants else base_file.name)
        if link_default:
            os.link(first, tmp / "model.gguf")
        if not keep_base:
            base_file.unlink()
        for name in TOKENIZER_FILES:
            if (merged_dir / name).is_file():
                shutil.copy2(merged_dir / name, tmp / name)
        result = GGUFExport(
            out_dir=str(out_dir),
            source_dir=str(merged_dir),
            safetensors_bytes=st_bytes,
            tokenizer_patched=patched,
            base=base,
            quants=done,
            wall_seconds=round(time.perf_counter() - t_all, 2),
            default="model.gguf" if link_default else first.name,
            base_kept=keep_base,
        )
        (tmp / EXPORT_MARKER).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m pumpl_assets.core.gguf MERGED_DIR OUT_DIR``: export a merged model for
    ``pumpl-serve --engine llamacpp --model-path OUT_DIR``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m pumpl_assets.core.gguf", description=main.__doc__)
    p.add_argument(
        "merged_dir", type=Path, help="a merged Hugging Face model folder (config.json, safetensors)"
    )
    p.add_argument("out_dir", type=Path, help="the export folder (replaced whole)")
    p.add_argument(
        "--quants",
        default="q8_0",
        help=f"comma-separated quants, the first becomes model.gguf (default q8_0; any of {','.join(QUANT_FTYPES)})",
    )
    p.add_argument("--base-type", choices=BASE_TYPES, default="f16", help="the converter's output type")
    args = p.parse_args(argv)
    quants = tuple(q.strip() for q in args.quants.split(",") if q.strip())
    try:
        result = export_gguf(args.merged_dir, args.out_dir, quants, base_type=args.base_type)
    except (FileNotFoundError, ValueError, GGUFExportError) as exc:
        print(f"gguf export: {exc}", file=sys.stderr)
        return 2
    for f in (result.base, *result.quants.values()):
        print(f"{Path(f.path).name}: {f.bytes / 1e6:.1f} MB ({f.ratio:.3f} of the safetensors)")
    print(f"serve it: pumpl-serve --engine llamacpp --model-path {result.out_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
