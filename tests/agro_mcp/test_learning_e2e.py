"""The learning loop end to end through the MCP client (issue 5, "Show it").

`agro serve` runs as a real subprocess over stdio on a data home indexed beforehand. Through the client alone: a
simulated assistant searches a small real corpus with clearly answerable questions and sends feedback (``used`` on
the right hit, ``thumbs_down`` on wrong hits above it, ``correct_location`` when the right code is not among the
results); ``reranker_admin train`` returns a run_id at once and ``status`` is polled until the job succeeds;
``reranker_admin promote`` gates the run. The runs are the default kind: the real MiniLM embedding model fine-tuned
as a bi-encoder reranker. When the gate promotes, the release id comes from the promote job; when it
legitimately refuses (a run on 40 questions need not beat retrieval on the held-out few), the refusal must be recorded with
its figures and the run is forced with ``agro promote RUN --force`` (MCP offers no force option). Either way the
*running* server must then report the new release in ``rag_search`` without a restart. A second run (trained on top
of that release) is promoted the same way, and ``reranker_admin rollback`` brings the first release back; rolling back
the first release is refused (it has no parent) while the server keeps serving. Finally, promoting the first run again
must re-run the gate against the release now serving, not reuse a verdict made when there was none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters


pytestmark = [pytest.mark.anyio, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = "toolkit"

# (file, function source, question a user would ask for it). Every function has a distinct purpose, so each question
# has exactly one right answer.
FUNCTIONS: list[tuple[str, str, str]] = [
    ("text/strings.py", '''
def slugify(title):
    """Turn a title into a lowercase URL slug with dashes between words."""
    words = "".join(c if c.isalnum() else " " for c in title.lower()).split()
    return "-".join(words)
''', "make a url friendly slug from an article title"),
    ("text/strings.py", '''
def truncate_words(text, limit, ellipsis="..."):
    """Shorten text to at most `limit` words, adding an ellipsis when something was cut."""
    words = text.split()
    if len(words) <= limit:
        return text
    return " ".join(words[:limit]) + ellipsis
''', "cut a sentence down to a maximum number of words"),
    ("text/strings.py", '''
def strip_accents(text):
    """Remove diacritics such as accents and umlauts from unicode text."""
    import unicodedata
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))
''', "remove accent marks from unicode characters"),
    ("text/strings.py", '''
def camel_to_snake(name):
    """Convert a CamelCase identifier into snake_case."""
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
''', "convert CamelCase names to snake_case"),
    ("text/strings.py", '''
def count_vowels(text):
    """Count how many vowels appear in a string."""
    return sum(1 for c in text.lower() if c in "aeiou")
''', "how many vowels are in a word"),
    ("text/strings.py", '''
def wrap_paragraph(text, width=72):
    """Break a paragraph into lines no wider than `width` characters."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])
''', "wrap long paragraph text at a fixed column width"),
    ("net/http_client.py", '''
def build_query_string(params):
    """Encode a dict of parameters as a URL query string, percent-escaping the values."""
    from urllib.parse import quote
    return "&".join(f"{k}={quote(str(v))}" for k, v in sorted(params.items()))
''', "encode request parameters into a url query string"),
    ("net/http_client.py", '''
def parse_content_type(header):
    """Split a Content-Type header into the media type and its charset."""
    media, _, rest = header.partition(";")
    charset = rest.split("=", 1)[1].strip() if "charset=" in rest else None
    return media.strip().lower(), charset
''', "read the charset out of a content type header"),
    ("net/http_client.py", '''
def retry_with_backoff(call, attempts=5, base=0.2):
    """Call a flaky network function again with exponentially growing sleeps between failures."""
    import time
    for n in range(attempts):
        try:
            return call()
        except ConnectionError:
            time.sleep(base * 2 ** n)
    raise ConnectionError("gave up")
''', "retry a failing network call with exponential backoff"),
    ("net/http_client.py", '''
def basic_auth_header(user, password):
    """Build the Authorization header for HTTP basic authentication."""
    import base64
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}
''', "create an http basic auth authorization header"),
    ("net/http_client.py", '''
def is_success_status(code):
    """True for 2xx HTTP status codes."""
    return 200 <= code < 300
''', "check whether an http status code means success"),
    ("net/http_client.py", '''
def follow_redirects(fetch, url, limit=10):
    """Follow HTTP 3xx redirects through Location headers until a final response, with a hop limit."""
    for _ in range(limit):
        response = fetch(url)
        if response.status not in (301, 302, 303, 307, 308):
            return response
        url = response.headers["Location"]
    raise RuntimeError("too many redirects")
''', "follow redirect responses to the final page"),
    ("storage/cache.py", '''
class LRUCache:
    """A fixed-size cache that evicts the least recently used entry when full."""

    def __init__(self, capacity):
        from collections import OrderedDict
        self.capacity = capacity
        self.data = OrderedDict()

    def put(self, key, value):
        self.data[key] = value
        self.data.move_to_end(key)
        if len(self.data) > self.capacity:
            self.data.popitem(last=False)
''', "evict the least recently used item when the cache is full"),
    ("storage/cache.py", '''
def expire_entries(entries, now, ttl):
    """Drop cache entries older than their time-to-live."""
    return {k: (t, v) for k, (t, v) in entries.items() if now - t < ttl}
''', "remove cached values whose time to live has expired"),
    ("storage/cache.py", '''
def cache_key(*args, **kwargs):
    """Derive a stable hash key from a function's positional and keyword arguments."""
    import hashlib
    raw = repr(args) + repr(sorted(kwargs.items()))
    return hashlib.sha1(raw.encode()).hexdigest()
''', "compute a stable cache key from function arguments"),
    ("storage/cache.py", '''
def invalidate_prefix(store, prefix):
    """Delete every cached key that starts with the given prefix; return how many were removed."""
    doomed = [k for k in store if k.startswith(prefix)]
    for k in doomed:
        del store[k]
    return len(doomed)
''', "invalidate all cache keys under a prefix"),
    ("storage/cache.py", '''
def hit_ratio(hits, misses):
    """Fraction of cache lookups that were served from the cache."""
    total = hits + misses
    return hits / total if total else 0.0
''', "what fraction of cache lookups were hits"),
    ("storage/cache.py", '''
def warm_from_disk(cache, path):
    """Preload the cache from a JSON snapshot file written at shutdown."""
    import json
    with open(path) as fh:
        for key, value in json.load(fh).items():
            cache[key] = value
''', "preload the cache from a saved snapshot on disk at startup"),
    ("mathx/stats.py", '''
def median(values):
    """The middle value of a list of numbers (mean of the two middle ones for even length)."""
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
''', "find the middle value of a list of numbers"),
    ("mathx/stats.py", '''
def percentile(values, q):
    """The q-th percentile of the values using linear interpolation between ranks."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
''', "compute the 95th percentile of latency samples"),
    ("mathx/stats.py", '''
def std_deviation(values):
    """Population standard deviation: the square root of the mean squared distance from the mean."""
    m = sum(values) / len(values)
    return (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5
''', "how spread out are the numbers, standard deviation"),
    ("mathx/stats.py", '''
def moving_average(values, window):
    """Average of each sliding window of consecutive values, to smooth a time series."""
    return [sum(values[i:i + window]) / window for i in range(len(values) - window + 1)]
''', "smooth a time series with a sliding window average"),
    ("mathx/stats.py", '''
def zscores(values):
    """Standardise values to zero mean and unit variance."""
    m = sum(values) / len(values)
    sd = (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5 or 1.0
    return [(v - m) / sd for v in values]
''', "normalize data to zero mean and unit variance"),
    ("mathx/stats.py", '''
def clamp(value, low, high):
    """Limit a number to the closed range [low, high]."""
    return max(low, min(high, value))
''', "keep a number within minimum and maximum bounds"),
    ("files/paths.py", '''
def atomic_write(path, data):
    """Write a file atomically: write a temporary sibling, fsync it, then rename it over the target."""
    import os
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
''', "save a file without leaving it half written if the process crashes"),
    ("files/paths.py", '''
def human_size(n):
    """Format a byte count as a human readable size such as 3.2 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
''', "format a number of bytes as KB MB GB"),
    ("files/paths.py", '''
def file_checksum(path, chunk=65536):
    """SHA-256 digest of a file, read in blocks so large files fit in memory."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
''', "compute the sha256 checksum of a large file"),
    ("files/paths.py", '''
def find_python_files(root):
    """Recursively list .py files under a folder, skipping hidden directories."""
    import os
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)
''', "walk a directory tree and list all python source files"),
    ("files/paths.py", '''
def ensure_dir(path):
    """Create a directory and its parents if it does not exist yet."""
    import os
    os.makedirs(path, exist_ok=True)
    return path
''', "create a folder including missing parent folders"),
    ("files/paths.py", '''
def remove_old_temp_files(folder, max_age_sec, now):
    """Delete temporary files in a folder that are older than a maximum age."""
    import os
    for name in os.listdir(folder):
        p = os.path.join(folder, name)
        if name.endswith(".tmp") and now - os.path.getmtime(p) > max_age_sec:
            os.remove(p)
''', "clean up stale temporary files older than some age"),
    ("auth/passwords.py", '''
def hash_password(password, salt):
    """Derive a password hash with PBKDF2-HMAC-SHA256 and many iterations."""
    import hashlib
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 200_000).hex()
''', "hash a user password securely with a salt"),
    ("auth/passwords.py", '''
def constant_time_equals(a, b):
    """Compare two secrets without leaking timing information."""
    import hmac
    return hmac.compare_digest(a, b)
''', "compare secret strings safely against timing attacks"),
    ("auth/passwords.py", '''
def generate_reset_token(nbytes=32):
    """A random URL-safe token for password reset links."""
    import secrets
    return secrets.token_urlsafe(nbytes)
''', "generate a random token for a password reset email"),
    ("auth/passwords.py", '''
def password_strength(password):
    """Score a password from 0 to 4 by length and the character classes it uses."""
    classes = [any(c.islower() for c in password), any(c.isupper() for c in password),
               any(c.isdigit() for c in password), any(not c.isalnum() for c in password)]
    return min(4, sum(classes) + (len(password) >= 12) - 1)
''', "rate how strong a password is"),
    ("auth/passwords.py", '''
def should_lock_account(failures, window_sec, now, limit=5):
    """Lock an account after too many failed logins within a time window."""
    recent = [t for t in failures if now - t < window_sec]
    return len(recent) >= limit
''', "lock the account after repeated failed login attempts"),
    ("auth/passwords.py", '''
def mask_email(email):
    """Hide most of an email address's local part, e.g. j***@example.com."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"
''', "hide part of an email address for display"),
]
# Searches scoped (path_glob) to a folder that does not hold the answer: the assistant then finds the code elsewhere
# and reports it with correct_location. Indices into FUNCTIONS.
WRONG_SCOPE = {2: "net/**", 9: "files/**", 17: "auth/**", 25: "text/**", 32: "mathx/**"}


def _env(home: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update({"AGRO_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT),
                "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra)
    return env


def _write_corpus(root: Path) -> list[dict]:
    """Write FUNCTIONS into their files; return per question its gold path, lines and symbol."""
    by_file: dict[str, list[str]] = {}
    gold = []
    for rel, src, question in FUNCTIONS:
        parts = by_file.setdefault(rel, [])
        start = sum(p.count("\n") + 1 for p in parts) + 1  # parts are joined with one blank line
        body = textwrap.dedent(src).strip("\n") + "\n"
        parts.append(body)
        first = body.splitlines()[0]
        symbol = first.split()[1].split("(")[0].split(":")[0]
        gold.append({"path": rel, "start_line": start, "end_line": start + body.count("\n") - 1,
                     "symbol": symbol, "question": question})
    for rel, parts in by_file.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("\n".join(parts), encoding="utf-8")
    for g in gold:  # the recorded spans really are where the functions are
        lines = (root / g["path"]).read_text(encoding="utf-8").splitlines()
        assert g["symbol"] in lines[g["start_line"] - 1], g
    return gold


async def _call(client, tool: str, **args) -> dict:
    res = await client.call_tool(tool, args)
    assert not res.is_error, f"{tool}({args}) failed: {res.content}"
    return res.structured_content


async def _poll(what: str, fn, done, within: float, every: float = 0.25):
    """Call ``fn`` until ``done(result)``; fail after ``within`` seconds with the last result."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await fn()
        if done(last):
            return last
        await anyio.sleep(every)
    raise AssertionError(f"{what}: not reached within {within}s; last: {json.dumps(last, default=str)[:2000]}")


async def _job(client, run_id: str, within: float = 240) -> dict:
    job = (await _poll(f"job {run_id}", lambda: _call(client, "reranker_admin", action="status", run_id=run_id),
                       lambda r: r["job"]["state"] in ("succeeded", "failed", "cancelled"), within, 0.5))["job"]
    if job["state"] != "succeeded":
        logs = await _call(client, "reranker_admin", action="logs", run_id=run_id)
        raise AssertionError(f"job {run_id} ended {job['state']}: {job['error']}\n" + "\n".join(logs["lines"][-30:]))
    return job


def _cli(home: Path, env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agro_mcp", *argv], env=env, capture_output=True, text=True,
                          timeout=300, cwd=home.parent)


async def _search(client, query: str, **kw) -> dict:
    return await _call(client, "rag_search", query=query, corpus=CORPUS, **kw)


async def _feedback_round(client, gold: list[dict]) -> dict[str, int]:
    """The simulated assistant: one search per question, feedback on what it sees."""
    sent = {"used": 0, "thumbs_down": 0, "correct_location": 0, "top1": 0}
    for i, g in enumerate(gold):
        scope = WRONG_SCOPE.get(i)
        out = await _search(client, g["question"], k=5, **({"path_glob": scope} if scope else {}))
        ev = out["event_id"]
        hits = out["results"]
        assert hits, g
        ranks = [r for r, h in enumerate(hits) if h["path"] == g["path"] and h["symbol"] == g["symbol"]]
        if ranks:
            right = ranks[0]
            sent["top1"] += right == 0
            await _call(client, "submit_feedback", event_id=ev, signal="used", doc_id=hits[right]["doc_id"])
            sent["used"] += 1
            for wrong in hits[:right]:
                await _call(client, "submit_feedback", event_id=ev, signal="thumbs_down", doc_id=wrong["doc_id"])
                sent["thumbs_down"] += 1
        else:
            await _call(client, "submit_feedback", event_id=ev, signal="correct_location", path=g["path"],
                        start_line=g["start_line"], end_line=g["end_line"])
            await _call(client, "submit_feedback", event_id=ev, signal="thumbs_down", doc_id=hits[0]["doc_id"])
            sent["correct_location"] += 1
            sent["thumbs_down"] += 1
    return sent


async def _train(client) -> tuple[str, dict]:
    t0 = time.monotonic()
    started = await _call(client, "reranker_admin", action="train")
    assert time.monotonic() - t0 < 10, "train must return its run_id at once, not after training"
    assert started["state"] == "started" and started["run_id"]
    job = await _job(client, started["run_id"])
    res = job["result"]
    assert res["run_id"] == started["run_id"] and res["decision"] == "not-attempted", res
    return started["run_id"], res


async def _promote(client, home: Path, env: dict, run_id: str, store) -> str:
    """Promote through MCP; if the gate refuses, check the refusal is recorded with its figures, then force it."""
    started = await _call(client, "reranker_admin", action="promote", run_id=run_id)
    res = (await _job(client, started["run_id"]))["result"]
    assert res["run_id"] == run_id and res["decision"] in ("promoted", "refused"), res
    if res["decision"] == "promoted":
        assert res["release"]
        return res["release"]
    # A refusal is an answer, not an error: its reasons name the figures, and the store keeps them.
    assert res["release"] is None and res["forced"] is False and res["reasons"], res
    row = next(p for p in store.list_promotions(500) if p["candidate"] == run_id)  # newest first
    assert row["decision"] == "refused" and row["release"] is None
    figures = row["payload"]["figures"]
    assert figures["n_queries"] >= 1 and "MRR@10" in figures["candidate"] and "MRR@10" in figures["retrieval"]
    runs = await _call(client, "reranker_admin", action="runs")
    (mine,) = [r for r in runs["runs"] if r["run_id"] == run_id]
    assert mine["gate"]["promote"] is False and mine["gate"]["reasons"] == res["reasons"]
    # MCP has no force option; the CLI does, and the running server must still pick its release up.
    out = _cli(home, env, "promote", run_id, "--force")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PROMOTED as " in out.stdout, out.stdout
    release = out.stdout.split("PROMOTED as ", 1)[1].split()[0]
    row = next(p for p in store.list_promotions(500) if p["release"] == release)
    assert row["decision"] == "promoted" and row["payload"]["forced"] is True
    return release


async def _served(client, release: str | None, within: float) -> dict:
    """Poll rag_search (no restart) until it reports ``release`` as the serving model."""
    def ok(r: dict) -> bool:
        if release is None:
            return r["reranker_model"] is None and r["reranking_used"] is False
        return r["reranker_model"] == release and r["reranking_used"] is True

    return await _poll(f"rag_search serving {release}", lambda: _search(client, "retry a flaky call", k=3), ok,
                       within)


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_feedback_train_promote_rollback_through_mcp_without_restart(tmp_path, backend_env):
    t_start = time.monotonic()
    repo = tmp_path / "toolkit"
    gold = _write_corpus(repo)
    home = tmp_path / "home"
    env = _env(  # the default run: the real MiniLM embedding model fine-tuned as a bi-encoder reranker
        home,
        AGRO_RERANKER_RELOAD_PERIOD_SEC="1",
        AGRO_RERANKER_TOPN="10",
        AGRO_TRAINING_MIN_TRIPLETS="10",
        AGRO_TRAINING_PROMOTE_MIN_QUERIES="5",
        AGRO_TRAINING_HELDOUT_FRACTION="0.3",
        AGRO_TRAINING_MAX_LENGTH="64",
        AGRO_TRAINING_BATCH_SIZE="8",
        AGRO_TRAINING_EPOCHS="2",
        AGRO_TRAINING_BI_ENCODER_EPOCHS="2",  # the default 4 ranks better; 2 keeps this test quick
        AGRO_TRAINING_CV_FOLDS="3",  # 36 questions are cross-validated; 3 folds train 4 models instead of 6
        **backend_env,
    )
    out = _cli(home, env, "index", str(repo), "--corpus", CORPUS)
    assert out.returncode == 0, out.stderr
    from training.events.store import open_event_store

    db = open_event_store(home, backend_env["AGRO_BACKEND"], backend_env.get("AGRO_DATABASE_URL"))

    params = StdioServerParameters(command=sys.executable, args=["-m", "agro_mcp", "serve"], env=env)
    asked: list[str] = []

    async def confirm(_context, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)  # rollback cannot be undone by the next search: the user is asked
        return types.ElicitResult(action="accept", content={"confirm": True})

    async with Client(params, read_timeout_seconds=120, elicitation_callback=confirm) as client:
        # No release yet: searches work, unreranked, and say why.
        first = await _served(client, None, within=60)
        assert "no reranker model" in first["reranker_fallback_reason"]

        sent = await _feedback_round(client, gold)
        assert sent["used"] >= 20 and sent["correct_location"] == len(WRONG_SCOPE) and sent["thumbs_down"] >= 5, sent

        run_a, res_a = await _train(client)
        assert res_a["gate"]["figures"]["n_queries"] >= 5, res_a["gate"]
        rel_a = await _promote(client, home, env, run_a, db)
        await _served(client, rel_a, within=15)

        info = await _call(client, "reranker_admin", action="info")
        assert info["loaded"] and info["release_id"] == rel_a and info["model"] == rel_a
        # The release shipped the indexed chunks' vectors: loaded before it served, the warm-up has nothing to embed.
        warmed = await _poll(f"warming {rel_a}", lambda: _call(client, "reranker_admin", action="info"),
                             lambda i: (i["warm"] or {}).get("model") == rel_a and i["warm"]["state"] == "done", 60)
        assert warmed["warm"]["embedded"] == 0 and warmed["warm"]["error"] is None, warmed["warm"]
        assert warmed["vectors"]["shipped"] == info["manifest"]["vectors"]["count"] > 0, warmed["vectors"]
        assert info["manifest"]["id"] == rel_a and info["manifest"]["parent"] is None
        runs = await _call(client, "reranker_admin", action="runs")
        assert run_a in [r["run_id"] for r in runs["runs"]]
        (row,) = [r for r in runs["runs"] if r["run_id"] == run_a]
        assert row["state"] == "succeeded" and row["triplets"] >= 10
        assert [r["id"] for r in runs["releases"] if r["current"]] == [rel_a]
        status = await _call(client, "reranker_admin", action="status")
        assert status["current_release"] == rel_a and status["training_lock"] is None

        # The first release has no parent: rollback is refused with a clear message and nothing changes.
        refused = await client.call_tool("reranker_admin", {"action": "rollback"})
        assert refused.is_error and "no parent" in str(refused.content)
        assert (await _search(client, "median of a list", k=3))["reranker_model"] == rel_a

        # A second run learns on top of the release (mining is recomputed from the whole store) and replaces it.
        run_b, _ = await _train(client)
        assert run_b != run_a
        with open(home / "models" / "runs" / run_b / "run.json", encoding="utf-8") as fh:
            assert json.load(fh)["base_model"].get("release_id") == rel_a
        rel_b = await _promote(client, home, env, run_b, db)
        assert rel_b != rel_a
        await _served(client, rel_b, within=15)
        info = await _call(client, "reranker_admin", action="info")
        assert info["release_id"] == rel_b and info["manifest"]["parent"] == rel_a

        # Rollback re-points current at the parent; the running server serves it again.
        rb = await _call(client, "reranker_admin", action="rollback")
        assert rb["from"] == rel_b and rb["release"] == rel_a
        assert f"from release {rel_b} to its parent {rel_a}" in asked[-1]
        await _served(client, rel_a, within=5)
        runs = await _call(client, "reranker_admin", action="runs")
        assert {run_a, run_b} <= {r["run_id"] for r in runs["runs"]}
        assert [r["id"] for r in runs["releases"] if r["current"]] == [rel_a]

        # Promoting run A again: its saved evaluation predates rel_a, so the gate must re-evaluate it against the
        # release serving now (the same weights: a tie, refused) instead of reusing the retrieval-only verdict.
        again = await _call(client, "reranker_admin", action="promote", run_id=run_a)
        res = (await _job(client, again["run_id"]))["result"]
        assert res["decision"] == "refused", res
        await _served(client, rel_a, within=5)
    rows = db.list_promotions(500)[::-1]  # oldest first
    decisions = [r["decision"] for r in rows]
    assert decisions[-2:] == ["rollback", "refused"] and decisions.count("promoted") == 2, decisions
    figures = rows[-1]["payload"]["figures"]
    assert rows[-1]["candidate"] == run_a, rows[-1]
    run_a_info = json.loads((home / "models" / "runs" / run_a / "run.json").read_text())
    if run_a_info.get("cross_validated"):
        # Few questions: run A was judged by cross-validation and then trained on every question, so no held-out
        # question is left to judge it again; the gate refuses it for that reason.
        assert figures["n_queries"] == 0, figures
    else:
        assert "current" in figures, figures
        assert figures["current"]["MRR@10"] == pytest.approx(figures["candidate"]["MRR@10"])
    print(f"\nlearning e2e: feedback {sent}; releases {rel_a} -> {rel_b} -> rollback {rel_a}; "
          f"{time.monotonic() - t_start:.1f}s")
