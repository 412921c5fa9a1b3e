"""What an index build may reach, whoever asks: the policy every face goes through (below the tools).

* **Never, from any face**: ``/``; system folders (``/etc``, ``/proc``, ``/sys``, ``/dev``, ``/boot``, ``/run``,
  ``/var``, ``/usr``, ``/bin``, ``/sbin``, ``/lib*``, ``/snap``; macOS ``/System``, ``/Library``, ``/private``) and
  anything below them, except the interpreter's own library folders (the standard library is pre-training's default
  corpus) and the temporary folder; a home folder as a whole (``~``, ``/root``, ``/home/<user>``, ``/Users/<user>``,
  and ``/home`` or ``/Users`` themselves) and ``~/.config`` / ``~/.local`` as wholes: they hold credential stores
  no list can name (browser profiles, keyrings, shell history, every tool's tokens), and nobody's code search needs
  them whole; a project folder inside a home is fine. Credential folders (``~/.ssh``, ``~/.aws``, ``~/.gnupg``,
  ``~/.config/gcloud``, ``~/.kube``, ``~/.docker``, ``~/.azure``, ``~/.password-store``, ...) and anything below
  them, and any folder that looks like an SSH folder (it holds ``authorized_keys`` or an ``id_*`` key).
* **Discovery** skips credential folders (by name, at any depth) and SSH-like folders inside any root it walks.
* **The MCP face** (``face="mcp"``) may index only under ``AGRO_INDEX_ROOTS`` (default: none), or re-index and
  refresh a corpus a person indexed from the CLI, from the same folder. **The CLI** may index any other folder.
* **A corpus's root is fixed** once indexed: indexing it from another folder needs the CLI's ``--root-change``.
"""

from __future__ import annotations

import os
import sysconfig
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from retrieval.errors import ReachError, RootChangeError

__all__ = [
    "CREDENTIAL_DIRS",
    "Face",
    "ReachPolicy",
    "SYSTEM_FOLDERS",
    "is_credential_dir",
    "looks_like_ssh_dir",
]

Face = Literal["cli", "mcp"]

SYSTEM_FOLDERS: tuple[str, ...] = (
    "/etc", "/proc", "/sys", "/dev", "/boot", "/run", "/var", "/usr", "/bin", "/sbin", "/snap", "/lost+found",
    "/System", "/Library", "/private", "/cores",
)  # and every top-level /lib* folder
HOME_CONTAINERS: tuple[str, ...] = ("/home", "/Users")  # each child is a home
CREDENTIAL_DIRS: tuple[str, ...] = (
    ".ssh", ".aws", ".gnupg", ".kube", ".docker", ".azure", ".password-store", ".gcloud", ".terraform.d", ".pki",
    ".config/gcloud", ".config/gh", ".config/hub", ".local/share/keyrings",
)
_HOME_WHOLES = (".config", ".local", ".local/share")
_CREDENTIAL_NAMES = frozenset(p for p in CREDENTIAL_DIRS if "/" not in p)
_CREDENTIAL_SUFFIXES = tuple("/" + p for p in CREDENTIAL_DIRS if "/" in p)
_SSH_MARKERS = frozenset({"authorized_keys", "authorized_keys2", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519",
                          "id_ecdsa_sk", "id_ed25519_sk"})


def is_credential_dir(rel: str) -> bool:
    """Whether the folder at POSIX path ``rel`` (relative to a root, or absolute) is a credential folder by name."""
    rel = rel.rstrip("/")
    return rel.rsplit("/", 1)[-1] in _CREDENTIAL_NAMES or ("/" + rel).endswith(_CREDENTIAL_SUFFIXES)


def looks_like_ssh_dir(names: Iterable[str]) -> bool:
    """Whether a folder holding files ``names`` is an SSH folder (or a copy of one) under whatever name."""
    return not _SSH_MARKERS.isdisjoint(names)


def _within(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def _real(p: Path | str) -> Path | None:
    try:
        return Path(os.path.realpath(p))
    except OSError:
        return None


def _allowed_system_paths() -> tuple[Path, ...]:
    out = [tempfile.gettempdir(), "/var/tmp"]
    paths = sysconfig.get_paths()
    out += [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(k)]
    return tuple(dict.fromkeys(r for r in map(_real, out) if r is not None))


@dataclass(frozen=True)
class ReachPolicy:
    """The reach rules for one settings object. ``roots``: ``AGRO_INDEX_ROOTS``; ``home``: the user's home."""

    roots: tuple[Path, ...] = ()
    home: Path | None = None
    allowed_system: tuple[Path, ...] = field(default_factory=_allowed_system_paths)

    @classmethod
    def from_settings(cls, index_settings, home: Path | None = None) -> ReachPolicy:
        if home is None:
            try:
                home = Path.home()
            except (RuntimeError, KeyError):
                home = None
        roots = tuple(r for r in (_real(Path(p).expanduser()) for p in getattr(index_settings, "roots", ())) if r)
        return cls(roots=roots, home=_real(home) if home is not None else None)

    # -- never --------------------------------------------------------------------------------------------
    def never_reason(self, real: Path) -> str | None:
        """Why no face may index the resolved folder ``real``, or None."""
        if real == Path(real.anchor):
            return "it is the file system's root"
        if not any(_within(real, a) for a in self.allowed_system):
            top = Path(real.anchor) / real.parts[1]
            if str(top) in SYSTEM_FOLDERS or real.parts[1].startswith("lib"):
                return f"it is a system folder ({top})"
        for c in HOME_CONTAINERS:
            if real == Path(c) or real.parent == Path(c):
                return "it is a home folder as a whole (index a project folder inside it)"
        home = self.home
        if home is not None:
            if _within(home, real):
                return "it is a home folder as a whole (index a project folder inside it)"
            if any(real == home / w for w in _HOME_WHOLES):
                return f"~/{real.relative_to(home).as_posix()} as a whole holds credential stores"
            for c in CREDENTIAL_DIRS:
                if _within(real, home / c):
                    return f"it is a credential folder (~/{c})"
        if real == Path("/root"):
            return "it is a home folder as a whole (index a project folder inside it)"
        for part in range(1, len(real.parts)):
            if is_credential_dir("/".join(real.parts[1 : part + 1])):
                return f"it is a credential folder ({Path(*real.parts[: part + 1])})"
        try:
            with os.scandir(real) as it:
                names = [e.name for e in it]
        except OSError:
            names = []
        if looks_like_ssh_dir(names):
            return "it looks like an SSH folder (it holds authorized_keys or an id_* key)"
        return None

    # -- the whole check ----------------------------------------------------------------------------------
    def check(self, root: Path, corpus: str, face: Face, current: dict | None, root_change: bool = False) -> Path:
        """Return the resolved ``root`` if ``face`` may index it as ``corpus``; raise otherwise.

        ``current`` is the corpus's published manifest (None when it has none).

        Raises:
            ReachError: never indexable, or not reachable from this face (the message names the setting).
            RootChangeError: the corpus is indexed from another folder and ``root_change`` was not given.
        """
        real = _real(root)
        if real is None:
            raise ReachError(f"Refusing to index {str(root)!r}: its real path cannot be resolved.")
        why = self.never_reason(real)
        if why is not None:
            raise ReachError(
                f"Refusing to index {str(real)!r}: {why}. agro-mcp never indexes the file system root, system "
                "folders, whole home folders or credential folders, from any face. Index the project's own folder, "
                "for example: agro index ~/src/myproject"
            )
        old_root = Path(current["root"]) if current and current.get("root") else None
        if old_root is not None and old_root != real:
            if face != "cli":
                raise RootChangeError(
                    f"Corpus {corpus!r} is indexed from {str(old_root)!r}; a tool call may not move it to "
                    f"{str(real)!r}. A person can, from a terminal: agro index {real} --corpus {corpus} --root-change"
                )
            if not root_change:
                raise RootChangeError(
                    f"Corpus {corpus!r} is indexed from {str(old_root)!r}, not {str(real)!r}. To move it, run: "
                    f"agro index {real} --corpus {corpus} --root-change (or choose another --corpus)"
                )
        if face == "mcp" and not any(_within(real, r) for r in self.roots):
            if not (current and old_root == real and current.get("cli_indexed")):
                roots = os.pathsep.join(map(str, self.roots)) or "empty"
                raise ReachError(
                    f"rag_index may not index {str(real)!r}: it is not under AGRO_INDEX_ROOTS ({roots}) and no person "
                    f"has indexed it. Index it once from a terminal (agro index {real} --corpus {corpus}; the assistant "
                    "may then refresh it), or add a parent folder to AGRO_INDEX_ROOTS."
                )
        return real
