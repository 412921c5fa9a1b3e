"""What an index build may reach (issue 20, finding 1): never system or credential folders, MCP only under
AGRO_INDEX_ROOTS or a corpus a person indexed, a fixed root per corpus, no special files, no crash on a path that
cannot be resolved. Real builds, real searches."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from retrieval.discovery import discover_files, read_text
from retrieval.errors import ReachError, RootChangeError
from retrieval.index import build_index, load_current
from retrieval.reach import ReachPolicy
from retrieval.search import search
from retrieval.settings import IndexSettings, RetrievalSettings
from tests.conftest import write_repo

IS = IndexSettings()
RS = RetrievalSettings()


def _write(root: Path, rel: str, content: str = "x = 1\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A temporary HOME with the usual credential folders in it."""
    h = tmp_path / "home-user"
    for rel in [".ssh/id_ed25519", ".ssh/authorized_keys", ".aws/credentials", ".config/gcloud/credentials.db",
                ".kube/config", ".docker/config.json", ".gnupg/pubring.kbx", "src/app/main.py"]:
        _write(h, rel, "def main():\n    return 1\n")
    monkeypatch.setenv("HOME", str(h))
    return h


@pytest.mark.parametrize("face", ["cli", "mcp"])
@pytest.mark.parametrize("folder", ["/", "/etc", "/proc", "/sys", "/dev", "/usr/share", "/var/log"])
def test_the_root_and_system_folders_are_refused_from_every_face(tmp_path, embedder, folder, face):
    if not Path(folder).is_dir():
        pytest.skip(f"{folder} does not exist here")
    with pytest.raises(ReachError, match="never indexes"):
        build_index(Path(folder), "sys", tmp_path / "agro", IS, RS, embedder, face=face)
    assert not (tmp_path / "agro" / "indexes" / "sys").exists()


@pytest.mark.parametrize("rel", ["", ".ssh", ".aws", ".config/gcloud", ".kube", ".docker", ".gnupg", ".config"])
def test_a_home_as_a_whole_and_its_credential_folders_are_refused(home, tmp_path, embedder, rel):
    with pytest.raises(ReachError, match="home folder as a whole|credential"):
        build_index(home / rel, "h", tmp_path / "agro", IS, RS, embedder)


def test_a_project_inside_the_home_is_allowed(home, tmp_path, embedder):
    summary = build_index(home / "src" / "app", "app", tmp_path / "agro", IS, RS, embedder)
    assert summary.published and summary.files == 1


def test_an_ssh_folder_copied_under_another_name_is_refused(tmp_path, embedder):
    copy = tmp_path / "backup-of-keys"
    _write(copy, "deploy_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAA\n"
           "-----END OPENSSH PRIVATE KEY-----\n")
    _write(copy, "authorized_keys", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9zcV3l0z8Wl deploy@ci\n")
    _write(copy, "config", "Host prod\n  HostName 10.0.0.5\n  IdentityFile ~/.ssh/deploy_key\n")
    with pytest.raises(ReachError, match="SSH folder"):
        build_index(copy, "keys", tmp_path / "agro", IS, RS, embedder)


def test_credential_folders_inside_a_root_are_never_entered(tmp_path):
    repo = write_repo(tmp_path / "repo")
    for rel in [".ssh/id_rsa", ".aws/credentials", ".docker/config.json", ".kube/config", ".config/gcloud/adc.json",
                "ops/keys-copy/authorized_keys", "ops/keys-copy/config"]:
        _write(repo, rel, "token: abc\n")
    res = discover_files(repo, IS)
    assert not any(f.path.startswith((".ssh", ".aws", ".docker", ".kube", ".config", "ops/")) for f in res.files)
    assert res.skipped["credentials"] == 6
    assert len(res.files) == 5


def test_an_etc_like_copy_is_indexed_without_its_password_hashes(tmp_path, embedder):
    etc = tmp_path / "etc-copy"
    _write(etc, "hostname", "build-box\n")
    _write(etc, "passwd", "root:x:0:0:root:/root:/bin/bash\n")
    _write(etc, "shadow", "root:$6$Hq1x2y3z$AbCdEfGhIjKlMnOpQrStUvWxYz0123456789./abcdefghijklmnopqr:19000:0:99999:7:::\n")
    _write(etc, "shadow.bak", "root:$6$Hq1x2y3z$AbCdEfGhIjKlMnOpQrStUvWxYz0123456789./abcdefghijklmnopqr:19000:0:99999:7:::\n")
    summary = build_index(etc, "etc", tmp_path / "agro", IS, RS, embedder)
    gen = load_current(tmp_path / "agro", "etc")
    assert sorted(gen.files) == ["hostname", "passwd"]
    assert summary.skipped["secret"] == 1 and summary.skipped["secret_content"] == 1
    hits = search(gen, embedder, "root:$6$ password hash", 10, RS).hits
    assert hits and not any("$6$" in h.chunk.text for h in hits)


def test_mcp_indexes_only_under_index_roots(tmp_path, embedder):
    repo = write_repo(tmp_path / "projects" / "repo")
    with pytest.raises(ReachError, match="AGRO_INDEX_ROOTS") as exc:
        build_index(repo, "repo", tmp_path / "agro", IS, RS, embedder, face="mcp")
    assert f"agro index {repo.resolve()} --corpus repo" in str(exc.value)
    allowed = IndexSettings(roots=[tmp_path / "projects"])
    assert build_index(repo, "repo", tmp_path / "agro", allowed, RS, embedder, face="mcp").published


def test_index_roots_come_from_a_path_list_in_the_environment_form():
    assert IndexSettings(roots="/a/b:/c,/d").roots == [Path("/a/b"), Path("/c"), Path("/d")]
    assert ReachPolicy.from_settings(IndexSettings()).roots == ()


def test_mcp_may_refresh_a_corpus_a_person_indexed_but_not_one_it_indexed_outside_the_roots(tmp_path, embedder):
    repo = write_repo(tmp_path / "repo")
    home = tmp_path / "agro"
    build_index(repo, "repo", home, IS, RS, embedder, face="cli")
    (repo / "new.py").write_text("def freshly_added_function():\n    return 42\n")
    summary = build_index(repo, "repo", home, IS, RS, embedder, face="mcp")
    assert summary.published and summary.added == 1
    gen = load_current(home, "repo")
    assert gen.manifest["cli_indexed"] is True
    assert search(gen, embedder, "freshly_added_function", 1, RS).hits[0].chunk.path == "new.py"

    other = write_repo(tmp_path / "other")
    roots = IndexSettings(roots=[other])
    build_index(other, "other", home, roots, RS, embedder, face="mcp")
    assert load_current(home, "other").manifest["cli_indexed"] is False
    with pytest.raises(ReachError, match="AGRO_INDEX_ROOTS"):  # the roots setting no longer covers it
        build_index(other, "other", home, IS, RS, embedder, face="mcp")


def test_a_corpus_root_is_fixed_unless_the_cli_passes_root_change(tmp_path, embedder):
    home = tmp_path / "agro"
    first = write_repo(tmp_path / "first")
    second = write_repo(tmp_path / "second", {"evil.py": "def planted():\n    return 'answer from elsewhere'\n"})
    build_index(first, "proj", home, IS, RS, embedder)
    with pytest.raises(RootChangeError, match="--root-change"):
        build_index(second, "proj", home, IS, RS, embedder)
    with pytest.raises(RootChangeError, match="tool call may not move it"):
        build_index(second, "proj", home, IndexSettings(roots=[tmp_path]), RS, embedder, face="mcp", root_change=True)
    gen = load_current(home, "proj")
    assert gen.root == first.resolve() and "evil.py" not in gen.files
    moved = build_index(second, "proj", home, IS, RS, embedder, root_change=True)
    assert moved.published and load_current(home, "proj").root == second.resolve()


def test_a_fifo_in_a_corpus_is_skipped_and_never_opened(tmp_path, embedder):
    repo = write_repo(tmp_path / "repo")
    os.mkfifo(repo / "pipe.py")
    summary = build_index(repo, "repo", tmp_path / "agro", IS, RS, embedder)
    assert summary.skipped == {"special": 1} and summary.files == 5


def test_reading_a_file_that_became_a_fifo_fails_at_once_instead_of_waiting(tmp_path):
    fifo = tmp_path / "was_a_file.py"
    os.mkfifo(fifo)
    outcome: list = []

    def read() -> None:
        try:
            outcome.append(read_text(fifo))
        except OSError as exc:
            outcome.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # unblock the reader (a writer opening the fifo), then fail
        with open(fifo, "w"):
            pass
        pytest.fail("read_text waited on a fifo")
    assert isinstance(outcome[0], OSError)


def test_a_link_whose_target_cannot_be_resolved_is_skipped_not_a_crash(tmp_path):
    try:
        os.path.realpath("/proc/1/cwd")
        pytest.skip("this process may resolve /proc/1/cwd")
    except PermissionError:
        pass
    repo = write_repo(tmp_path / "repo")
    os.symlink("/proc/1/cwd", repo / "cwd")
    res = discover_files(repo, IS)
    assert res.skipped == {"permission_denied": 1} and len(res.files) == 5
