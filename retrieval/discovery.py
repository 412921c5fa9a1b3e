"""Find the files of a repository that are worth indexing, and say why the others were skipped.

Rules, in the order they are applied to each entry (the first that matches decides):

1. ``.git`` directories are never entered (not counted). Credential folders (``.ssh``, ``.aws``, ``.gnupg``,
   ``.kube``, ``.docker``, ``.config/gcloud``, ... at any depth, see ``retrieval.reach``) and folders that look
   like an SSH folder are never entered (``credentials``); nor are pseudo file systems (``/proc``-like mounts:
   ``special``).
2. Symlinks: a link whose target is outside the root is skipped (``symlink_outside_root``); a broken or looping link
   is skipped (``broken_symlink``); a link to a directory is never descended, which rules out loops
   (``symlink_dir``); a link to a file inside the root is indexed under the link's path unless the target itself is
   indexed, so each file is indexed once.
3. Secrets by name (``DEFAULT_SECRET_PATTERNS`` on the basename, case-insensitive, checked for a link's target too)
   are skipped (``secret``), and so is any other name for the same file (a hard link: same device and inode).
   They are checked before the ignore rules so the summary counts every secret the walk saw. Secrets by content
   are found later, when a file is read (``retrieval.secrets``, in ``retrieval.build.plan_files``).
4. ``DEFAULT_IGNORES`` (vendored and build output, lock files, caches: ``vendored``), then ``.gitignore`` files at
   every level plus ``.git/info/exclude`` and ``settings.extra_ignores`` (``ignored``). A deeper ``.gitignore``
   overrides a shallower one, so its ``!pattern`` can re-include a file. An ignored directory is not entered, so
   it counts once, not once per file inside it.
5. Special files (fifos, sockets, devices: ``special``) are never opened. Size over ``settings.max_file_bytes``
   (``too_large``), unreadable (``permission_denied``, ``unreadable``; never an exception), binary (a known binary
   extension or a NUL byte in the first 8 KiB: ``binary``), minified ``.js``/``.css`` (average line over 300
   characters or any line over 5,000: ``minified``).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pathspec import GitIgnoreSpec

from retrieval.reach import is_credential_dir, looks_like_ssh_dir
from retrieval.settings import DEFAULT_IGNORES, DEFAULT_SECRET_PATTERNS, IndexSettings

__all__ = [
    "DiscoveryResult",
    "FileEntry",
    "detect_language",
    "discover_files",
    "is_secret_name",
    "read_text",
]

logger = logging.getLogger(__name__)

_SNIFF_BYTES = 8192
_EXAMPLES_PER_REASON = 5
_MINIFIED_EXTS = frozenset({".js", ".mjs", ".cjs", ".css"})
_MINIFIED_AVG_LINE = 300
_MINIFIED_MAX_LINE = 5000

BINARY_EXTENSIONS: frozenset[str] = frozenset(
    {
        # images, media, fonts
        ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".icns", ".webp", ".tif", ".tiff", ".psd", ".heic",
        ".mp3", ".mp4", ".wav", ".ogg", ".flac", ".avi", ".mov", ".mkv", ".webm", ".m4a",
        ".woff", ".woff2", ".ttf", ".otf", ".eot",
        # archives and packages
        ".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".tar", ".jar", ".war", ".whl", ".egg",
        ".deb", ".rpm", ".dmg", ".iso", ".apk",
        # compiled code and objects
        ".pyc", ".pyo", ".pyd", ".so", ".dll", ".dylib", ".exe", ".o", ".a", ".lib", ".obj", ".class",
        ".wasm", ".bin", ".dat",
        # documents and data
        ".pdf", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx", ".odt",
        ".sqlite", ".sqlite3", ".db", ".npy", ".npz", ".pkl", ".pickle", ".parquet", ".feather", ".h5", ".hdf5",
        ".pt", ".pth", ".ckpt", ".onnx", ".safetensors", ".gguf", ".tflite", ".pb",
    }
)

_SECRET_SPEC = GitIgnoreSpec.from_lines(p.lower() for p in DEFAULT_SECRET_PATTERNS)
_DEFAULT_SPEC = GitIgnoreSpec.from_lines(DEFAULT_IGNORES)


@dataclass(slots=True)
class FileEntry:
    """A file selected for indexing."""

    path: str  # POSIX, relative to the root
    abs_path: Path
    size: int
    mtime_ns: int


@dataclass(slots=True)
class DiscoveryResult:
    """Files to index, in sorted path order, and what was skipped.

    ``skipped`` maps a reason to a count of entries; an ignored directory counts as one entry.
    ``skipped_examples`` keeps the first few relative paths per reason.
    """

    files: list[FileEntry]
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)


def is_secret_name(name: str) -> bool:
    """Whether a file's basename looks like a secret (``.env``, ``id_rsa``, ``*.pem``, credentials, ...)."""
    return _SECRET_SPEC.match_file(name.lower())


class _Skips:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, rel: str) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < _EXAMPLES_PER_REASON:
            ex.append(rel)


def _load_ignore_file(path: Path) -> GitIgnoreSpec | None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        logger.warning("Cannot read ignore file %s: %s", path, exc)
        return None
    spec = GitIgnoreSpec.from_lines(lines)
    return spec if len(spec) else None


def _is_ignored(rel: str, is_dir: bool, specs: list[tuple[str, GitIgnoreSpec]]) -> bool:
    """Gitignore verdict: the deepest spec with an opinion wins; within a spec, the last matching pattern."""
    for base, spec in reversed(specs):
        sub = rel[len(base):] if base else rel
        verdict = spec.check_file(sub + "/" if is_dir else sub).include
        if verdict is not None:
            return verdict
    return False


_PSEUDO_FS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore", "bpf",
    "configfs", "fusectl", "mqueue", "hugetlbfs", "binfmt_misc", "autofs", "efivarfs", "rpc_pipefs", "nsfs", "devfs",
})


def _pseudo_mounts() -> frozenset[str]:
    """Mount points of pseudo file systems (``/proc`` and the like, wherever mounted); empty off Linux."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            rows = fh.read().splitlines()
    except OSError:
        return frozenset()
    out = set()
    for row in rows:
        left, _, right = row.partition(" - ")
        fields, fstype = left.split(), right.split()[:1]
        if len(fields) > 4 and fstype and fstype[0] in _PSEUDO_FS:
            out.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return frozenset(out)


def _open_regular(abs_path: Path | str):
    """Open a file for reading only if it is a regular file: a fifo or a device swapped in after discovery is
    neither waited on nor read (``O_NONBLOCK`` on open, then a check of what was opened)."""
    fd = os.open(abs_path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(abs_path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _os_reason(exc: OSError) -> str:
    return "permission_denied" if exc.errno in (errno.EACCES, errno.EPERM) else "unreadable"


def _sniff(abs_path: str, ext: str) -> str | None:
    """Read the start of a file (all of it for minifiable types); return a skip reason or None."""
    with _open_regular(abs_path) as fh:
        if ext in _MINIFIED_EXTS:
            data = fh.read()
        else:
            data = fh.read(_SNIFF_BYTES)
    if b"\0" in data[:_SNIFF_BYTES]:
        return "binary"
    if ext in _MINIFIED_EXTS and data:
        lines = data.split(b"\n")
        if len(data) / len(lines) > _MINIFIED_AVG_LINE or max(map(len, lines)) > _MINIFIED_MAX_LINE:
            return "minified"
    return None


def _within(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def discover_files(root: Path, settings: IndexSettings) -> DiscoveryResult:
    """Walk ``root`` and return the files to index, deterministically sorted, with skip counts.

    Raises:
        FileNotFoundError: if ``root`` does not exist.
        NotADirectoryError: if ``root`` is not a directory.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"discover_files expects an existing directory, but {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"discover_files expects a directory, but {str(root)!r} is not one")
    real_root = os.path.realpath(root)
    pseudo = _pseudo_mounts()
    secret_inodes: set[tuple[int, int]] = set()  # files skipped by name: another name for one is skipped too
    skips = _Skips()
    files: list[FileEntry] = []
    linked: list[tuple[FileEntry, str]] = []  # symlinked files, resolved target, decided after the walk
    indexed_real: set[str] = set()

    root_specs: list[tuple[str, GitIgnoreSpec]] = []
    if settings.extra_ignores:
        root_specs.append(("", GitIgnoreSpec.from_lines(settings.extra_ignores)))
    if settings.respect_gitignore:
        exclude = root / ".git" / "info" / "exclude"
        if exclude.is_file() and (spec := _load_ignore_file(exclude)) is not None:
            root_specs.insert(0, ("", spec))

    def check_file(name: str, abs_path: str, st: os.stat_result) -> str | None:
        if st.st_size > settings.max_file_bytes:
            return "too_large"
        ext = os.path.splitext(name)[1].lower()
        if ext in BINARY_EXTENSIONS:
            return "binary"
        try:
            return _sniff(abs_path, ext)
        except OSError as exc:
            logger.debug("Cannot read %s: %s", abs_path, exc)
            return _os_reason(exc)

    def walk(dir_abs: str, dir_rel: str, specs: list[tuple[str, GitIgnoreSpec]]) -> None:
        if settings.respect_gitignore:
            gi = os.path.join(dir_abs, ".gitignore")
            if os.path.isfile(gi) and (spec := _load_ignore_file(Path(gi))) is not None:
                specs = [*specs, (dir_rel, spec)]
        try:
            with os.scandir(dir_abs) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            logger.debug("Cannot list %s: %s", dir_abs, exc)
            skips.add(_os_reason(exc), dir_rel.rstrip("/") or ".")
            return
        if dir_rel and looks_like_ssh_dir(e.name for e in entries):
            skips.add("credentials", dir_rel.rstrip("/"))
            return
        for entry in entries:
            name = entry.name
            rel = dir_rel + name
            try:
                is_link = entry.is_symlink()
                is_dir = not is_link and entry.is_dir(follow_symlinks=False)
            except OSError as exc:
                skips.add(_os_reason(exc), rel)
                continue
            if name == ".git":
                continue
            if is_dir and is_credential_dir(rel):
                skips.add("credentials", rel)
                continue
            if is_dir and pseudo and entry.path in pseudo:
                skips.add("special", rel)
                continue
            target_real = None
            if is_link:
                try:
                    target_real = os.path.realpath(entry.path)
                except OSError as exc:  # e.g. /proc/1/cwd: the link itself cannot be resolved
                    skips.add(_os_reason(exc), rel)
                    continue
                if not _within(target_real, real_root):
                    skips.add("symlink_outside_root", rel)
                    continue
                try:
                    st = os.stat(entry.path)
                except OSError:
                    skips.add("broken_symlink", rel)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    skips.add("symlink_dir", rel)
                    continue
            if not is_dir and (
                is_secret_name(name) or (target_real is not None and is_secret_name(os.path.basename(target_real)))
            ):
                skips.add("secret", rel)
                try:
                    st = entry.stat(follow_symlinks=True)
                    secret_inodes.add((st.st_dev, st.st_ino))
                except OSError:
                    pass
                continue
            if _DEFAULT_SPEC.match_file(rel + "/" if is_dir else rel):
                skips.add("vendored", rel)
                continue
            if _is_ignored(rel, is_dir, specs):
                skips.add("ignored", rel)
                continue
            if is_dir:
                walk(entry.path, rel + "/", specs)
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                skips.add(_os_reason(exc), rel)
                continue
            if not stat.S_ISREG(st.st_mode):
                skips.add("special", rel)
                continue
            reason = check_file(name, entry.path, st)
            if reason is not None:
                skips.add(reason, rel)
                continue
            fe = FileEntry(path=rel, abs_path=Path(entry.path), size=st.st_size, mtime_ns=st.st_mtime_ns)
            if st.st_nlink > 1:
                hard_linked[fe.path] = (st.st_dev, st.st_ino)
            if target_real is not None:
                linked.append((fe, target_real))
            else:
                files.append(fe)
                indexed_real.add(os.path.realpath(entry.path))

    hard_linked: dict[str, tuple[int, int]] = {}
    walk(str(root), "", root_specs)
    if secret_inodes and hard_linked:  # another name for a file skipped as a secret (a hard link to .env)
        for fe in [fe for fe in files if hard_linked.get(fe.path) in secret_inodes]:
            skips.add("secret", fe.path)
            files.remove(fe)
        for item in [it for it in linked if hard_linked.get(it[0].path) in secret_inodes]:
            skips.add("secret", item[0].path)
            linked.remove(item)
    for fe, target_real in linked:
        if target_real in indexed_real:
            skips.add("symlink_duplicate", fe.path)
            continue
        indexed_real.add(target_real)
        files.append(fe)
    files.sort(key=lambda f: f.path)
    logger.debug("Discovered %d files under %s; skipped %s", len(files), root, dict(skips.counts))
    return DiscoveryResult(files=files, skipped=dict(sorted(skips.counts.items())), skipped_examples=skips.examples)


def read_text(abs_path: Path | str) -> tuple[str, bool]:
    """Read a file as text with newlines normalised to ``\\n``.

    Returns:
        The text and whether it was valid UTF-8. Invalid bytes are decoded as U+FFFD rather than failing;
        a UTF-8 byte-order mark is dropped.

    Raises:
        OSError: if the file cannot be read.
    """
    with _open_regular(abs_path) as fh:
        data = fh.read()
    try:
        text, ok = data.decode("utf-8"), True
    except UnicodeDecodeError:
        text, ok = data.decode("utf-8", errors="replace"), False
    text = text.removeprefix("\ufeff")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, ok


_EXT_LANG: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".go": "go", ".rs": "rust", ".java": "java",
    ".md": "markdown", ".markdown": "markdown", ".mdx": "markdown", ".rst": "rst",
    ".json": "json", ".jsonc": "json", ".json5": "json", ".ipynb": "json",
    ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".ini": "ini", ".cfg": "ini", ".conf": "ini",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".fish": "shell", ".ps1": "powershell",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".cs": "csharp", ".kt": "kotlin", ".kts": "kotlin", ".scala": "scala", ".swift": "swift",
    ".rb": "ruby", ".php": "php", ".lua": "lua", ".r": "r", ".jl": "julia", ".dart": "dart",
    ".ex": "elixir", ".exs": "elixir", ".erl": "erlang", ".hs": "haskell", ".ml": "ocaml", ".clj": "clojure",
    ".html": "html", ".htm": "html", ".xml": "xml", ".svg": "xml", ".vue": "vue", ".svelte": "svelte",
    ".css": "css", ".scss": "css", ".sass": "css", ".less": "css",
    ".sql": "sql", ".proto": "protobuf", ".graphql": "graphql", ".gql": "graphql", ".tf": "terraform",
    ".txt": "text", ".cmake": "cmake", ".mk": "make", ".gradle": "groovy", ".groovy": "groovy",
}
_NAME_LANG: dict[str, str] = {
    "dockerfile": "dockerfile", "makefile": "make", "gnumakefile": "make", "cmakelists.txt": "cmake",
    "gemfile": "ruby", "rakefile": "ruby", "justfile": "make", "jenkinsfile": "groovy",
    ".bashrc": "shell", ".zshrc": "shell", ".profile": "shell",
}


def detect_language(path: str) -> str:
    """Language name of a file from its name or extension (``python``, ``tsx``, ``markdown``, ...; else ``text``)."""
    name = path.rsplit("/", 1)[-1].lower()
    if name in _NAME_LANG:
        return _NAME_LANG[name]
    if name.startswith("dockerfile"):
        return "dockerfile"
    dot = name.rfind(".")
    if dot > 0 or (dot == 0 and name.count(".") > 1):
        return _EXT_LANG.get(name[dot:], "text")
    return "text"
