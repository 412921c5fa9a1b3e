"""Secrets found by content (issue 20, finding 2): the scanner's rules, then real builds and real searches in which no
planted secret becomes searchable, skipped by default or redacted line by line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from retrieval.index import build_index, load_current
from retrieval.search import search
from retrieval.secrets import redact_lines, scan_text
from retrieval.settings import IndexSettings, RetrievalSettings

RS = RetrievalSettings()

AWS = "AKIAQYLPMN5HHHFPZAM2"
GHP = "ghp_R8s2kV0xQ3mN7bT5yW1zL9cA4dF6hJ2pE8uG"
DB_PASSWORD = "Xk9#mQ2$vLp7"
DOCKER_AUTH = "ZGV2dXNlcjpTM2NyM3RQYXNzITIwMjQ="
KUBE_TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6Ik1kRkZ2cDNxIn0.eyJpc3MiOiJrdWJlcm5ldGVzIn0.c2lnbmF0dXJlX3F3ZXJ0eQ"
TF_PASSWORD = "Zq8!vN3#rT6w"
KEY_BODY = ("MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u",
            "qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW/VDL5AaWTg0nLVkjRo9z+40RQz")
ENV_TEXT = "FEATURE_FLAGS=search,answers\nDEPLOY_REGION=eu-north-marker\n"  # nothing secret-looking by content

SECRET_FILES: dict[str, str] = {
    "app/config.py": f'"""Settings."""\n\nAWS_ACCESS_KEY_ID = "{AWS}"\nGITHUB_TOKEN = "{GHP}"\n\n\n'
                     "def load_config():\n    return {'region': 'eu-west-1'}\n",
    "settings.ini": f"[database]\nhost = db.internal\nuser = app\npassword = {DB_PASSWORD}\n",
    ".docker/config.json": json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": DOCKER_AUTH}}}),
    "deploy/docker-auth.json": json.dumps({"auths": {"registry.example.com": {"auth": DOCKER_AUTH}}}),
    ".kube/config": f"apiVersion: v1\nusers:\n- name: ci\n  user:\n    token: {KUBE_TOKEN}\n",
    "ops/cluster.yaml": f"apiVersion: v1\nusers:\n- name: ci\n  user:\n    token: {KUBE_TOKEN}\n",
    "infra/terraform.tfstate": json.dumps({"resources": [{"instances": [{"attributes": {"password": TF_PASSWORD}}]}]}),
    "infra/state-copy.json": json.dumps({"resources": [{"instances": [{"attributes": {"password": TF_PASSWORD}}]}]}),
    "keys/deploy_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(KEY_BODY) + "\n-----END OPENSSH PRIVATE KEY-----\n",
    ".env": ENV_TEXT,
}
SECRETS = [AWS, GHP, DB_PASSWORD, DOCKER_AUTH, KUBE_TOKEN, TF_PASSWORD, KEY_BODY[0], KEY_BODY[1], "eu-north-marker"]


def _repo(root: Path) -> Path:
    for rel, text in {**SECRET_FILES, "app/billing.py": "def compute_invoice_total(lines):\n    return sum(lines)\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    os.link(root / ".env", root / "app" / "runtime_defaults.txt")  # a hard link to .env under another name
    return root


# -- the scanner --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "language,text,kind",
    [
        ("python", f'KEY = "{AWS}"\n', "aws_access_key"),
        ("python", f'token = "{GHP}"\n', "github_token"),
        ("python", 'GL = "glpat-Xy7Qm3Lp9Vz2Rk8Tn4Wb"\n', "gitlab_token"),
        ("python", 'SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"\n', "slack_token"),
        ("javascript", 'Stripe("sk_live_51Hx9Qa8Kb7Lc6Md5Ne4Of3Pg")\n', "stripe_key"),
        ("python", 'MAPS = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"\n', "gcp_api_key"),
        ("text", "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=" + "a1B2" * 21 + "ab==\n", "azure_storage_key"),
        ("ini", "[db]\nurl = postgresql://app:Xk9mQ2vLp7w@db.internal:5432/prod\n", "password_in_url"),
        ("ini", f"[database]\npassword = {DB_PASSWORD}\n", "password_assignment"),
        ("python", 'DB_PASSWORD = "Tr0ub4dor&3x"\n', "password_assignment"),
        ("text", "SECRET_KEY=8f3Kq9Lm2Vx7Rt5Yb1Nc6Zd4We0Pa\n", "secret_assignment"),
        ("json", json.dumps({"auth": DOCKER_AUTH}), "secret_assignment"),
        ("text", "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(KEY_BODY) + "\n-----END RSA PRIVATE KEY-----\n",
         "private_key"),
        ("json", '{"private_key": "-----BEGIN PRIVATE KEY-----\\n' + KEY_BODY[0] + '\\n-----END PRIVATE KEY-----\\n"}',
         "private_key"),
        ("yaml", "client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQpNSUlFb3dJQkFBS0NBUUVBdTFTVTFMZlZM\n",
         "private_key"),
        ("text", "root:$6$Hq1x2y3z$AbCdEfGhIjKlMnOpQrStUvWxYz0123456789./abcdefgh:19000:0:99999:7:::\n", "password_hash"),
    ],
)
def test_the_scanner_finds_each_kind_of_secret(language, text, kind):
    assert [f.kind for f in scan_text(text, language)] == [kind]


@pytest.mark.parametrize(
    "language,text",
    [
        ("python", 'password = request.form["password"]\nif password == "secret":\n    pass\n'),
        ("python", 'password = os.environ["DB_PASSWORD"]\nPASSWORD_FIELD = "password"\ntoken_type = "Bearer"\n'),
        ("python", 'PEM_HEADER = "-----BEGIN RSA PRIVATE KEY-----"\nif line.startswith(PEM_HEADER):\n    pass\n'),
        ("markdown", "Connect with `postgres://user:password@localhost/db` or `${DATABASE_URL}`.\n"),
        ("python", 'sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"\n'),
        ("ini", "[db]\npassword = changeme\napi_key = <your-api-key>\ntoken = ${CI_TOKEN}\n"),
        ("yaml", "password_reset_timeout: 3600\nauth_url: https://example.com/auth\nsecret_name: db-creds\n"),
        ("python", "def check(password: str, token: str = None) -> bool:\n    return auth(password=password)\n"),
    ],
)
def test_the_scanner_leaves_ordinary_code_and_placeholders_alone(language, text):
    assert scan_text(text, language) == []


def test_redaction_replaces_only_the_secret_lines_and_keeps_line_numbers():
    text = f'import os\nKEY = "{AWS}"\n\n\ndef f():\n    return 1\n'
    out = redact_lines(text, scan_text(text, "python"))
    assert AWS not in out and out.count("\n") == text.count("\n")
    assert out.split("\n")[1] == "[redacted by agro-mcp: aws_access_key]" and out.split("\n")[4] == "def f():"


# -- real builds and searches -------------------------------------------------------------------------------
def _all_text(gen) -> str:
    return "\n".join(c.text for c in gen.chunks)


def test_no_planted_secret_becomes_searchable(tmp_path, embedder):
    repo = _repo(tmp_path / "repo")
    home = tmp_path / "agro"
    summary = build_index(repo, "repo", home, IndexSettings(), RS, embedder)
    gen = load_current(home, "repo")
    assert sorted(gen.files) == ["app/billing.py"]
    text = _all_text(gen)
    for secret in SECRETS:
        assert secret not in text
        for mode in ("bm25", "fused"):
            assert not any(secret in h.chunk.text for h in search(gen, embedder, secret, 10, RS, mode).hits)
    # by content: config.py, settings.ini, docker-auth.json, cluster.yaml, state-copy.json, deploy_key
    assert summary.skipped == {"secret_content": 6, "credentials": 2, "secret": 3}  # .docker/ .kube/; .env, its
    assert summary.secrets == {"aws_access_key": 1, "github_token": 1, "password_assignment": 2,  # hard link,
                               "secret_assignment": 2, "private_key": 1}  # terraform.tfstate
    manifest = json.dumps(gen.manifest)
    assert not any(s in manifest for s in SECRETS)


def test_a_skipped_secret_file_is_not_stale_and_not_read_again_until_it_changes(tmp_path, embedder):
    from retrieval.index import stale_files

    repo = _repo(tmp_path / "repo")
    home = tmp_path / "agro"
    build_index(repo, "repo", home, IndexSettings(), RS, embedder)
    gen = load_current(home, "repo")
    assert stale_files(gen, IndexSettings())["total"] == 0
    again = build_index(repo, "repo", home, IndexSettings(), RS, embedder)
    assert not again.published and again.skipped["secret_content"] == 6
    (repo / "settings.ini").write_text("[database]\nhost = db.internal\n")  # the secret is gone
    assert stale_files(gen, IndexSettings())["added"] == 1
    fixed = build_index(repo, "repo", home, IndexSettings(), RS, embedder)
    assert fixed.published and fixed.added == 1 and "settings.ini" in load_current(home, "repo").files


def test_redact_mode_keeps_the_rest_of_the_file_searchable(tmp_path, embedder):
    repo = _repo(tmp_path / "repo")
    home = tmp_path / "agro"
    summary = build_index(repo, "repo", home, IndexSettings(secrets="redact"), RS, embedder)
    gen = load_current(home, "repo")
    assert "app/config.py" in gen.files and gen.files["app/config.py"]["redacted"] == ["aws_access_key", "github_token"]
    assert summary.redacted_files == 6 and "secret_content" not in summary.skipped
    text = _all_text(gen)
    assert not any(s in text for s in SECRETS)
    hit = search(gen, embedder, "load_config", 1, RS).hits[0]
    assert hit.chunk.path == "app/config.py"
    config = "\n".join(c.text for c in gen.chunks if c.path == "app/config.py")
    assert "[redacted by agro-mcp: aws_access_key]" in config and "def load_config" in config
    names = {".env", "app/runtime_defaults.txt", "infra/terraform.tfstate", ".docker/config.json", ".kube/config"}
    assert not names & set(gen.files)  # secret-bearing names and folders stay excluded in redact mode


def test_generations_built_under_other_secret_rules_are_removed_once_a_new_one_is_published(tmp_path, embedder):
    from retrieval.index import corpus_dir

    repo = _repo(tmp_path / "repo")
    home = tmp_path / "agro"
    build_index(repo, "repo", home, IndexSettings(secrets="redact"), RS, embedder)
    (repo / "app" / "billing.py").write_text("def compute_invoice_total(lines):\n    return sum(lines) + 1\n")
    build_index(repo, "repo", home, IndexSettings(secrets="redact"), RS, embedder)
    gens = corpus_dir(home, "repo") / "gens"
    assert len([p for p in gens.iterdir() if not p.name.startswith(".")]) == 2
    build_index(repo, "repo", home, IndexSettings(), RS, embedder)  # skip mode: a full build, then the purge
    assert len([p for p in gens.iterdir() if not p.name.startswith(".")]) == 1
