"""Secret scanners compared: findings and files flagged on real corpora (false positives) and on planted secrets.

Every corpus is walked by ``retrieval.discovery.discover_files`` (the files an index would read), then scanned by

* ``agro``: ``retrieval.secrets.scan_text`` (what the index build uses), and
* ``detect-secrets`` (Yelp, default plugins and filters), when ``--detect-secrets`` names its executable
  (``python -m venv /tmp/ds && /tmp/ds/bin/pip install detect-secrets``; it is not a dependency).

The bench corpora are public code with no real secrets, so every flagged file there is a false positive (the
script prints each one with its finding kinds, for a person to check). The planted set (``PLANTED``, the secrets
of issue 20 and the regression tests) measures what each scanner finds.

    python bench/bench_secrets.py --detect-secrets /tmp/ds/bin/detect-secrets [--bench ../shared/bench] [--repo .]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.discovery import detect_language, discover_files, read_text  # noqa: E402
from retrieval.secrets import scan_text  # noqa: E402
from retrieval.settings import IndexSettings  # noqa: E402

_KEY = ("MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwK"
        "fBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW/VDL5AaWTg0nLVkjRo9z+40RQzuVaE8AkAFmxZz")
PLANTED: dict[str, str] = {
    "config.py": 'AWS_ACCESS_KEY_ID = "AKIAQYLPMN5HHHFPZAM2"\nAWS_REGION = "eu-west-1"\n',
    "tokens.py": 'GITHUB_TOKEN = "ghp_R8s2kV0xQ3mN7bT5yW1zL9cA4dF6hJ2pE8uG"\n',
    "settings.ini": "[database]\nhost = db.internal\nuser = app\npassword = Xk9#mQ2$vLp7\n",
    "db.ini": "[db]\nurl = postgresql://app:Xk9mQ2vLp7w@db.internal:5432/prod\n",
    "docker_config.json": '{"auths": {"https://index.docker.io/v1/": {"auth": "ZGV2dXNlcjpTM2NyM3RQYXNzITIwMjQ="}}}\n',
    "kubeconfig.yaml": "users:\n- name: ci\n  user:\n    token: eyJhbGciOiJSUzI1NiIsImtpZCI6Ik1kRkZ2cDNxIn0.eyJpc3MiOiJrdWJlcm5ldGVzIn0.c2lnbmF0dXJlX3F3ZXJ0eQ\n",
    "state.json": '{"attributes": {"password": "Zq8!vN3#rT6w", "id": "db-1"}}\n',
    "deploy_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n" + _KEY[:70] + "\n" + _KEY[70:140] + "\n-----END OPENSSH PRIVATE KEY-----\n",
    "env_backup": "DEBUG=1\nSECRET_KEY=8f3Kq9Lm2Vx7Rt5Yb1Nc6Zd4We0Pa\n",
    "stripe.js": 'const stripe = Stripe("sk_live_51Hx9Qa8Kb7Lc6Md5Ne4Of3Pg");\n',
    "slack.py": 'SLACK_TOKEN = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"\n',
    "gcp.py": 'MAPS_KEY = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"\n',
}


def corpora(bench: Path | None, repo: Path | None) -> list[tuple[str, Path]]:
    out = []
    if repo is not None:
        out.append(("agro-mcp (this repository)", repo))
    if bench is not None:
        for name in ("docstring_boltons", "docstring_httpx", "docstring_jinja"):
            if (bench / name / "corpus_original").is_dir():
                out.append((f"{name}/corpus_original", bench / name / "corpus_original"))
        swe = bench / "swebench_lite_dev"
        if swe.is_dir():
            for d in sorted(p for p in swe.iterdir() if (p / "repo").is_dir()):
                out.append((f"swebench_lite_dev/{d.name}", d / "repo"))
    return out


def scan_agro(files) -> dict[str, Counter]:
    flagged: dict[str, Counter] = {}
    for fe in files:
        try:
            text, _ = read_text(fe.abs_path)
        except OSError:
            continue
        found = scan_text(text, detect_language(fe.path))
        if found:
            flagged[fe.path] = Counter(f.kind for f in found)
    return flagged


def scan_detect_secrets(exe: str, root: Path, files) -> dict[str, Counter]:
    flagged: dict[str, Counter] = {}
    rels = [fe.path for fe in files]
    for i in range(0, len(rels), 400):
        out = subprocess.run([exe, "scan", *rels[i:i + 400]], cwd=root, capture_output=True, text=True, check=True)
        for path, results in json.loads(out.stdout)["results"].items():
            flagged[path] = Counter(r["type"] for r in results)
    return flagged


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=ROOT.parent.parent / "shared" / "bench")
    ap.add_argument("--repo", type=Path, default=ROOT)
    ap.add_argument("--detect-secrets", dest="ds", help="path of the detect-secrets executable (optional)")
    ap.add_argument("--list", action="store_true", help="print every flagged file")
    args = ap.parse_args()
    scanners = {"agro": None}
    if args.ds:
        scanners["detect-secrets"] = args.ds
    rows = []
    totals = {s: Counter() for s in scanners}
    kinds = {s: Counter() for s in scanners}
    examples = {s: [] for s in scanners}
    with tempfile.TemporaryDirectory() as tmp:
        planted = Path(tmp) / "planted"
        planted.mkdir()
        for name, text in PLANTED.items():
            (planted / name).write_text(text)
        sets = [("planted secrets (each file holds one)", planted)]
        sets += corpora(args.bench if args.bench.is_dir() else None, args.repo)
        for label, root in sets:
            # the name-based rules would skip some planted files before any scanner saw them: scan them all
            files = discover_files(root, IndexSettings()).files if root != planted else [
                type("F", (), {"path": n, "abs_path": planted / n})() for n in sorted(PLANTED)]
            row = {"corpus": label, "files": len(files)}
            for s, exe in scanners.items():
                t = time.perf_counter()
                flagged = scan_agro(files) if exe is None else scan_detect_secrets(exe, root, files)
                row[s] = (len(flagged), sum(sum(c.values()) for c in flagged.values()), time.perf_counter() - t)
                if root != planted:
                    totals[s].update(files=len(files), flagged=len(flagged), findings=row[s][1])
                    for path, c in flagged.items():
                        kinds[s].update(c)
                        examples[s].append(f"{label}: {path} {dict(c)}")
            rows.append(row)
    names = list(scanners)
    print("| corpus | files | " + " | ".join(f"{s}: files flagged / findings / s" for s in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for r in rows:
        print(f"| {r['corpus']} | {r['files']} | " + " | ".join(
            f"{r[s][0]} / {r[s][1]} / {r[s][2]:.1f}" for s in names) + " |")
    for s in names:
        t = totals[s]
        print(f"\n{s}: real corpora: {t['flagged']} of {t['files']} files flagged ({t['findings']} findings), "
              f"by kind {dict(kinds[s].most_common())}")
        if args.list:
            for e in examples[s]:
                print("   ", e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
