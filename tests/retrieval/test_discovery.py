import os
from pathlib import Path

import pytest

from retrieval.discovery import detect_language, discover_files, is_secret_name, read_text
from retrieval.settings import IndexSettings


def _write(root: Path, rel: str, content: str | bytes = "x = 1\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _paths(root: Path, **kw) -> list[str]:
    return [f.path for f in discover_files(root, IndexSettings(**kw)).files]


def test_walk_returns_sorted_posix_paths_with_stat(tmp_path):
    _write(tmp_path, "b.py")
    _write(tmp_path, "a/z.py")
    _write(tmp_path, "a/b/c.py")
    res = discover_files(tmp_path, IndexSettings())
    assert [f.path for f in res.files] == ["a/b/c.py", "a/z.py", "b.py"]
    entry = res.files[0]
    assert entry.abs_path == tmp_path / "a" / "b" / "c.py"
    assert entry.size == 6 and entry.mtime_ns > 0


def test_root_gitignore_is_honoured_with_negation(tmp_path):
    _write(tmp_path, ".gitignore", "*.log\n!keep.log\nlogs/\n/only_root.py\n")
    for rel in ["a.log", "keep.log", "logs/x.py", "only_root.py", "sub/only_root.py", "main.py"]:
        _write(tmp_path, rel)
    assert _paths(tmp_path) == [".gitignore", "keep.log", "main.py", "sub/only_root.py"]


def test_nested_gitignore_applies_relative_to_its_directory(tmp_path):
    _write(tmp_path, "pkg/.gitignore", "/gen.py\n*.tmp\n!important.tmp\n")
    _write(tmp_path, ".gitignore", "important.tmp\n")
    for rel in ["gen.py", "pkg/gen.py", "pkg/deep/gen.py", "pkg/a.tmp", "pkg/important.tmp", "b.tmp"]:
        _write(tmp_path, rel)
    paths = _paths(tmp_path)
    assert "gen.py" in paths and "pkg/deep/gen.py" in paths and "b.tmp" in paths
    assert "pkg/gen.py" not in paths and "pkg/a.tmp" not in paths
    assert "pkg/important.tmp" in paths  # the deeper file's negation wins


def test_gitignore_can_be_turned_off(tmp_path):
    _write(tmp_path, ".gitignore", "*.log\n")
    _write(tmp_path, "a.log")
    assert "a.log" in _paths(tmp_path, respect_gitignore=False)


def test_default_ignores_skip_vendored_build_lock_and_git(tmp_path):
    for rel in ["node_modules/lib/index.js", "dist/app.js", "build/x.py", ".venv/lib/y.py", "package-lock.json",
                "poetry.lock", "web/app.min.js", ".git/config", "src/main.py"]:
        _write(tmp_path, rel)
    res = discover_files(tmp_path, IndexSettings())
    assert [f.path for f in res.files] == ["src/main.py"]
    assert res.skipped["vendored"] == 7  # .git is skipped without being counted
    assert "node_modules" in res.skipped_examples["vendored"]


def test_extra_ignores_use_gitignore_syntax(tmp_path):
    _write(tmp_path, "docs/a.md", "# a\n")
    _write(tmp_path, "src/gen_pb2.py")
    _write(tmp_path, "src/ok.py")
    res = discover_files(tmp_path, IndexSettings(extra_ignores=["docs/", "*_pb2.py"]))
    assert [f.path for f in res.files] == ["src/ok.py"]
    assert res.skipped["ignored"] == 2


def test_minified_files_are_skipped(tmp_path):
    _write(tmp_path, "long_line.js", "var a=1;" * 1000 + "\n")
    _write(tmp_path, "wide.css", ("a{b:c}" * 60 + "\n") * 20)
    _write(tmp_path, "normal.js", "function f() {\n  return 1;\n}\n")
    res = discover_files(tmp_path, IndexSettings())
    assert [f.path for f in res.files] == ["normal.js"]
    assert res.skipped["minified"] == 2


@pytest.mark.parametrize(
    "rel", [".env", ".env.local", "id_rsa", "id_ed25519.pub", "server.pem", "tls.key", "creds/credentials.json"]
)
def test_secrets_are_skipped_and_counted(tmp_path, rel):
    _write(tmp_path, rel, "SECRET=hunter2\n")
    _write(tmp_path, "app.py")
    res = discover_files(tmp_path, IndexSettings())
    assert [f.path for f in res.files] == ["app.py"]
    assert res.skipped == {"secret": 1}
    assert res.skipped_examples["secret"] == [rel]


def test_secret_file_names_are_always_skipped_whatever_the_settings(tmp_path):
    for rel in [".env", "id_rsa", "server.pem", "infra/terraform.tfstate", "kubeconfig", "home/.bash_history"]:
        _write(tmp_path, rel, "x = 1\n")
    res = discover_files(tmp_path, IndexSettings(secrets="redact"))
    assert res.files == [] and res.skipped == {"secret": 6}


def test_secret_name_matching_is_by_basename_and_case_insensitive():
    assert is_secret_name(".ENV") and is_secret_name("prod.env") and is_secret_name("service-account-1.json")
    assert not is_secret_name("environment.py") and not is_secret_name("keys.py") and not is_secret_name("env.md")


def test_binary_files_are_skipped_by_extension_and_nul_byte(tmp_path):
    _write(tmp_path, "logo.png", "not really a png")
    _write(tmp_path, "blob.dat2", b"abc\x00def")
    _write(tmp_path, "ok.txt", "hello\n")
    res = discover_files(tmp_path, IndexSettings())
    assert [f.path for f in res.files] == ["ok.txt"]
    assert res.skipped["binary"] == 2


def test_files_over_the_size_cap_are_skipped(tmp_path):
    _write(tmp_path, "big.py", "x = 1\n" * 500)
    _write(tmp_path, "small.py")
    res = discover_files(tmp_path, IndexSettings(max_file_bytes=1000))
    assert [f.path for f in res.files] == ["small.py"]
    assert res.skipped == {"too_large": 1}


def test_symlink_to_outside_root_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    _write(outside, "secret_stuff.py")
    root = tmp_path / "repo"
    _write(root, "a.py")
    (root / "link_dir").symlink_to(outside, target_is_directory=True)
    (root / "link_file.py").symlink_to(outside / "secret_stuff.py")
    res = discover_files(root, IndexSettings())
    assert [f.path for f in res.files] == ["a.py"]
    assert res.skipped["symlink_outside_root"] == 2


def test_symlink_loop_and_dir_links_are_safe(tmp_path):
    _write(tmp_path, "pkg/a.py")
    (tmp_path / "pkg" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "self_loop").symlink_to(tmp_path / "self_loop")
    res = discover_files(tmp_path, IndexSettings())
    assert [f.path for f in res.files] == ["pkg/a.py"]
    assert res.skipped["symlink_dir"] == 1 and res.skipped["broken_symlink"] == 1


def test_symlinked_file_inside_root_is_indexed_once(tmp_path):
    _write(tmp_path, "real/a.py")
    _write(tmp_path, "real/b.py")
    (tmp_path / "alias_a.py").symlink_to(tmp_path / "real" / "a.py")
    (tmp_path / "real" / ".gitignore").write_text("b.py\n")
    (tmp_path / "alias_b.py").symlink_to(tmp_path / "real" / "b.py")
    res = discover_files(tmp_path, IndexSettings())
    assert [f.path for f in res.files] == ["alias_b.py", "real/.gitignore", "real/a.py"]
    assert res.skipped["symlink_duplicate"] == 1


def test_symlink_to_a_secret_is_skipped(tmp_path):
    _write(tmp_path, "config/.env", "A=1\n")
    (tmp_path / "settings.txt").symlink_to(tmp_path / "config" / ".env")
    res = discover_files(tmp_path, IndexSettings())
    assert res.files == [] and res.skipped["secret"] == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_file_is_skipped_and_counted(tmp_path):
    path = _write(tmp_path, "locked.py")
    path.chmod(0)
    try:
        res = discover_files(tmp_path, IndexSettings())
    finally:
        path.chmod(0o644)
    assert res.files == [] and res.skipped == {"unreadable": 1}


def test_non_utf8_file_is_discovered_and_read_without_crash(tmp_path):
    path = _write(tmp_path, "latin1.py", "name = 'caf\xe9'\r\nx = 1\r\n".encode("latin-1"))
    assert _paths(tmp_path) == ["latin1.py"]
    text, ok = read_text(path)
    assert not ok
    assert text == "name = 'caf\ufffd'\nx = 1\n"


def test_read_text_normalises_newlines_and_drops_bom(tmp_path):
    path = _write(tmp_path, "a.py", "\ufeffa\r\nb\rc\n".encode())
    assert read_text(path) == ("a\nb\nc\n", True)


def test_missing_root_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_files(tmp_path / "nope", IndexSettings())


def test_file_root_raises_not_a_directory(tmp_path):
    path = _write(tmp_path, "a.py")
    with pytest.raises(NotADirectoryError, match="is not one"):
        discover_files(path, IndexSettings())


@pytest.mark.parametrize(
    ("path", "language"),
    [("a/b.py", "python"), ("x.tsx", "tsx"), ("x.ts", "typescript"), ("x.mjs", "javascript"), ("m.go", "go"),
     ("lib.rs", "rust"), ("A.java", "java"), ("README.md", "markdown"), ("c.yml", "yaml"), ("pyproject.toml", "toml"),
     ("run.sh", "shell"), ("Dockerfile", "dockerfile"), ("Makefile", "make"), ("x.h", "c"), ("x.cpp", "cpp"),
     ("q.sql", "sql"), ("LICENSE", "text"), (".gitignore", "text"), ("x.unknown", "text")],
)
def test_detect_language_by_extension_and_name(path, language):
    assert detect_language(path) == language
