"""The PostgreSQL + pgvector index backend: chunks, BM25 statistics and vectors in tables, hybrid search in SQL.

Schema (component ``index``, versioned by :meth:`retrieval.pgdb.Database.migrate`)::

    agro_corpora   (corpus PK, generation, manifest jsonb, n_docs, total_len)   one row per corpus
    agro_chunks    (corpus, id) PK, path, lines, language, symbol, hash, text, doc_len, embed_dim, embedding
    agro_postings  (corpus, term, chunk_id) PK, tf, dl                          BM25 postings, dl denormalised
    agro_terms     (corpus, term) PK, df                                          document frequencies

The three data tables are LIST-partitioned by corpus (one partition per corpus, created at its first index),
so every query prunes to one corpus and each corpus has its own HNSW graph. On Citus the same tables are
distributed by ``corpus`` (README: "Sharding with Citus").

Lexical ranking is BM25 computed in SQL from the postings, with the same code-aware tokens, k1, b and IDF as
the embedded backend, so both rank identically (measured on ../shared/bench; see bench/bench_pg.py).
``ts_rank_cd`` over a ``tsvector`` was measured as the alternative and is not BM25.

A refresh is one transaction: the changed and deleted files' chunks and postings are deleted, the new ones
copied in, document frequencies adjusted and the corpus row (generation id, manifest) updated. Readers see
the old generation or the new one, never a mix: the fused query is one statement on one snapshot and reports
the generation it read. One writer per corpus across every machine: a session advisory lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from retrieval.build import BuildJob, IndexSummary, build_generation, document_tokens
from retrieval.errors import IndexLockedError, NoIndexError
from retrieval.globs import path_glob_pg
from retrieval.index import GenerationManifest, validate_corpus_id
from retrieval.pgdb import Database
from retrieval.settings import IndexSettings, RetrievalSettings
from retrieval.tokenize import code_tokens
from retrieval.types import Chunk, Hit

__all__ = ["INDEX_MIGRATIONS", "PgIndexBackend", "PgIndexView", "pg_regex"]

logger = logging.getLogger(__name__)

INDEX_MIGRATIONS: list[tuple[str, ...]] = [
    (  # 1: initial schema
        """CREATE TABLE agro_corpora (
            corpus text PRIMARY KEY,
            generation text NOT NULL,
            manifest jsonb NOT NULL,
            n_docs bigint NOT NULL,
            total_len bigint NOT NULL,
            updated timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE agro_chunks (
            corpus text NOT NULL,
            id bigint NOT NULL,
            path text NOT NULL,
            start_line integer NOT NULL,
            end_line integer NOT NULL,
            language text NOT NULL,
            symbol text,
            hash text NOT NULL,
            text text NOT NULL,
            doc_len integer NOT NULL,
            embed_dim integer NOT NULL,
            embedding vector NOT NULL,
            PRIMARY KEY (corpus, id)) PARTITION BY LIST (corpus)""",
        "CREATE INDEX agro_chunks_path ON agro_chunks (corpus, path)",
        "CREATE INDEX agro_chunks_hash ON agro_chunks (corpus, hash)",
        """CREATE TABLE agro_postings (
            corpus text NOT NULL,
            term text NOT NULL,
            chunk_id bigint NOT NULL,
            tf integer NOT NULL,
            dl integer NOT NULL,
            w real NOT NULL,
            PRIMARY KEY (corpus, term, chunk_id) INCLUDE (tf, dl)) PARTITION BY LIST (corpus)""",
        "CREATE INDEX agro_postings_impact ON agro_postings (corpus, term, w DESC) INCLUDE (chunk_id)",
        """CREATE TABLE agro_terms (
            corpus text NOT NULL,
            term text NOT NULL,
            df integer NOT NULL,
            PRIMARY KEY (corpus, term)) PARTITION BY LIST (corpus)""",
        "CREATE SEQUENCE agro_chunk_id_seq",
    ),
]

_PARTITIONED = ("agro_chunks", "agro_postings", "agro_terms")


EF_SEARCH_MARGIN = 40  # auto ef_search = the dense candidates + this (bench_pg --only haystack --haystack-ef)


pg_regex = path_glob_pg  # the path glob as a PostgreSQL regular expression (the embedded filter's language)


def _partition_suffix(corpus: str) -> str:
    return hashlib.sha1(corpus.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------
@dataclass
class PgIndexView(GenerationManifest):
    """The published generation of one corpus in PostgreSQL, as the pipeline sees an index generation."""

    backend: PgIndexBackend
    corpus: str
    generation_id: str
    manifest: dict
    _extra: dict = field(default_factory=dict, repr=False)

    @property
    def n_chunks(self) -> int:
        return int(self.manifest["n_chunks"])

    @cached_property
    def chunks(self) -> list[Chunk]:
        """Every chunk of the corpus (the corpus bootstrap miner reads them all), in path and line order."""
        return self.backend.all_chunks(self.corpus)

    def some_chunks(self, limit: int) -> list[Chunk]:
        """The first ``limit`` chunks, read afresh (``chunks`` keeps all of them for the view's lifetime)."""
        return self.__dict__["chunks"][:limit] if "chunks" in self.__dict__ else self.backend.all_chunks(
            self.corpus, limit)

    def search(self, embedder, query: str, k: int, settings: RetrievalSettings, mode: str = "fused",
               path_glob: str | None = None, language: str | None = None,
               query_vector: np.ndarray | None = None, use_query_cache: bool = True):
        return self.backend.search(self, embedder, query, k, settings, mode, path_glob, language,
                                   query_vector, use_query_cache)


class PgIndexBackend:
    """Indexes in PostgreSQL. Thread-safe: every call takes a pooled connection."""

    name = "postgres"

    def __init__(self, db: Database, home: Path | None = None) -> None:
        self.db = db
        self.home = home
        db.migrate("index", INDEX_MIGRATIONS)
        self._hnsw_dims: set[int] = set()

    # -- corpora and generations --------------------------------------------------------------------------
    def list_corpora(self) -> list[str]:
        return self.db.read(lambda c: [r[0] for r in c.execute("SELECT corpus FROM agro_corpora ORDER BY corpus")],
                            "list_corpora")

    def current_generation_id(self, corpus: str) -> str | None:
        def q(conn):
            row = conn.execute("SELECT generation FROM agro_corpora WHERE corpus = %s", (corpus,)).fetchone()
            return row[0] if row else None

        return self.db.read(q, "current_generation_id")

    def load_current(self, corpus: str) -> PgIndexView:
        def q(conn):
            return conn.execute("SELECT generation, manifest FROM agro_corpora WHERE corpus = %s", (corpus,)).fetchone()

        row = self.db.read(q, "load_current")
        if row is None:
            known = self.list_corpora()
            hint = f" Known corpora: {', '.join(known)}." if known else " No corpus is indexed yet."
            raise NoIndexError(f"No index for corpus {corpus!r}.{hint} Build it with: agro index /path/to/repo --corpus {corpus}")
        return PgIndexView(self, corpus, row[0], row[1])

    def all_chunks(self, corpus: str, limit: int | None = None) -> list[Chunk]:
        def q(conn):
            return conn.execute(
                "SELECT path, start_line, end_line, language, symbol, text, hash FROM agro_chunks "
                "WHERE corpus = %s ORDER BY path, start_line, id LIMIT %s", (corpus, limit)
            ).fetchall()

        return [Chunk(*r) for r in self.db.read(q, "all_chunks")]

    def all_vectors(self, corpus: str) -> np.ndarray:
        """Every chunk's embedding, in the order of :meth:`all_chunks` (for in-memory views of the corpus)."""
        def q(conn):
            return conn.execute("SELECT embedding FROM agro_chunks WHERE corpus = %s ORDER BY path, start_line, id",
                                (corpus,)).fetchall()

        rows = self.db.read(q, "all_vectors")
        return np.stack([_as_array(r[0]) for r in rows]).astype(np.float32) if rows else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        """The pool is shared by the process (index and event store); it is closed by retrieval.pgdb.close_all."""

    # -- search ---------------------------------------------------------------------------------------------
    def search(self, view: PgIndexView, embedder, query: str, k: int, settings: RetrievalSettings,
               mode: str = "fused", path_glob: str | None = None, language: str | None = None,
               query_vector: np.ndarray | None = None, use_query_cache: bool = True):
        """BM25, dense and RRF in one SQL statement (one round trip, one snapshot)."""
        from retrieval.search import SearchResult, dense_fusion_weight

        timings: dict[str, float] = {}
        terms: list[str] = []
        qv = None
        if mode in ("bm25", "fused"):
            terms = code_tokens(query)
        if mode in ("dense", "fused"):
            t = time.perf_counter()
            qv = query_vector if query_vector is not None else embedder.encode_query(query, cache=use_query_cache)
            timings["embed_query"] = (time.perf_counter() - t) * 1000
        counts = Counter(terms)
        dim = int(view.manifest.get("embed_dim") or (len(qv) if qv is not None else 0))
        params: dict = {
            "corpus": view.corpus,
            "terms": list(counts),
            "qtf": list(counts.values()),
            "max_terms": settings.max_query_terms,
            "k1": settings.bm25_k1,
            "b": settings.bm25_b,
            "rrf_k": settings.rrf_k,
            "w_dense": dense_fusion_weight(embedder, query, settings) if mode == "fused" else 1.0,
            "k": k,
            "n_lex": settings.lexical_candidates if mode == "fused" else k,
            "n_dense": settings.dense_candidates if mode == "fused" else k,
        }
        filt = ""
        if path_glob:
            params["rx"] = pg_regex(path_glob)
            filt += " AND c.path ~ %(rx)s"
        if language:
            params["lang"] = language.lower()
            filt += " AND c.language = %(lang)s"
        if qv is not None:
            params["qv"] = np.asarray(qv, dtype=np.float32)
        per_term = settings.lexical_postings_per_term
        if per_term:
            # A budget of postings per query: a long query (many terms) reads fewer of each term's postings.
            n_terms = max(1, min(len(counts), settings.max_query_terms))
            params["per_term"] = max(100, min(per_term, settings.lexical_postings_budget // n_terms))
        sql = _search_sql(mode, dim, filt, per_term=bool(per_term))
        ef = settings.hnsw_ef_search or params["n_dense"] + EF_SEARCH_MARGIN

        def run(conn):
            with conn.cursor() as cur:
                cur.execute("SELECT set_config('hnsw.ef_search', %s, true), "
                            "set_config('hnsw.iterative_scan', 'relaxed_order', true)", (str(ef),))
                cur.execute(sql, params, prepare=True)
                return cur.fetchall()

        t = time.perf_counter()
        rows = self.db.read(run, "search")
        timings["sql"] = (time.perf_counter() - t) * 1000
        hits = []
        n_lex = n_dense = 0
        used_terms: list[str] = []
        for r in rows:
            (_id, score, bm25_rank, bm25_score, dense_rank, dense_score, path, start, end, lang, symbol, text,
             chash, generation, n_lex, n_dense, used_terms) = r
            hits.append(Hit(
                chunk=Chunk(path, start, end, lang, symbol, text, chash),
                fused_score=float(score), score=float(score),
                bm25_rank=bm25_rank, dense_rank=dense_rank,
                bm25_score=None if bm25_score is None else float(bm25_score),
                dense_score=None if dense_score is None else float(dense_score),
            ))
            if generation != view.generation_id:
                logger.debug("search of %s read generation %s (view had %s)", view.corpus, generation, view.generation_id)
        return SearchResult(hits=hits, timings=timings, query_terms=list(used_terms or []),
                            candidates={"bm25": int(n_lex or 0), "dense": int(n_dense or 0)},
                            dense_weight=params["w_dense"])

    # -- build: this backend's part of retrieval.build ----------------------------------------------------
    def build(
        self,
        root: Path,
        corpus: str,
        index_settings: IndexSettings,
        retrieval_settings: RetrievalSettings,
        embedder,
        progress: Callable[[str, int, int], None] | None = None,
        full: bool = False,
        previous=None,
        **reach,
    ) -> IndexSummary:
        """Index ``root`` as ``corpus``: only added and changed files are chunked and embedded; published in one
        transaction. Raises IndexLockedError when another process (on any machine) is writing this corpus.
        ``reach``: ``face``, ``root_change`` and ``reach`` of :func:`retrieval.build.build_generation`."""
        validate_corpus_id(corpus)
        return build_generation(self, root, corpus, index_settings, retrieval_settings, embedder, progress, full,
                                previous, **reach)

    @contextlib.contextmanager
    def lock(self, corpus: str) -> Iterator[None]:
        """A session advisory lock, held by a connection kept out of the pool for the whole build."""
        key = f"agro-index:{corpus}"
        with self.db.pool.connection() as lock_conn:
            lock_conn.autocommit = True
            try:
                if not lock_conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()[0]:
                    raise IndexLockedError(
                        f"Corpus {corpus!r} is being indexed by another process (on this or another machine sharing "
                        "the database). Searches keep working on the current generation; run the index again when "
                        "that one finishes."
                    )
                try:
                    yield
                finally:
                    lock_conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
            finally:
                lock_conn.autocommit = False

    def before_build(self, corpus: str, index_settings: IndexSettings) -> None:
        """Nothing to collect: a publish replaces the corpus's rows in one transaction."""

    def current_manifest(self, corpus: str) -> dict | None:
        def q(conn):
            row = conn.execute("SELECT manifest FROM agro_corpora WHERE corpus = %s", (corpus,)).fetchone()
            return row[0] if row else None

        return self.db.read(q, "current_manifest")

    def reuse_vectors(self, corpus: str, prev, hashes: list[str]) -> dict[str, np.ndarray]:
        def fetch(conn):
            return conn.execute(
                "SELECT DISTINCT ON (hash) hash, embedding FROM agro_chunks WHERE corpus = %s AND hash = ANY(%s)",
                (corpus, hashes),
            ).fetchall()

        return {h: _as_array(v) for h, v in self.db.read(fetch, "reuse embeddings")}

    def write(self, job: BuildJob) -> int:
        """A full build loads fresh partitions and swaps them in; a refresh replaces the changed files' rows."""
        corpus, prev, plan, dim = job.corpus, job.prev, job.plan, job.dim
        new_chunks, vecs = job.new_chunks, job.new_vectors
        toks = [Counter(document_tokens(c)) for c in new_chunks]
        gen_id = job.generation_id
        drop_paths = [] if prev is None else [p for p in prev.files if p not in plan.files or p in plan.new_chunks]
        files_meta = {p: dict(rec) for p, rec in plan.files.items()}
        retrieval_settings = job.retrieval_settings
        rs_k1, rs_b = retrieval_settings.bm25_k1, retrieval_settings.bm25_b

        def manifest_for(n_docs: int) -> dict:
            return {
                **job.manifest,
                "backend": "postgres",
                "bm25": {"k1": rs_k1, "b": rs_b, "idf": "lucene"},
                # the graph is built by a full build and kept by incremental ones
                "hnsw": prev.manifest.get("hnsw", _PGVECTOR_HNSW_DEFAULTS) if prev is not None
                else {"m": retrieval_settings.hnsw_m, "ef_construction": retrieval_settings.hnsw_ef_construction},
                "n_chunks": int(n_docs),
                "files": files_meta,
            }

        def upsert_corpus(conn, table_chunks: str) -> int:
            n_docs, total_len = conn.execute(
                f"SELECT count(*), coalesce(sum(doc_len), 0) FROM {table_chunks} WHERE corpus = %s", (corpus,)
            ).fetchone()
            conn.execute(
                "INSERT INTO agro_corpora (corpus, generation, manifest, n_docs, total_len) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (corpus) DO UPDATE SET generation = EXCLUDED.generation, manifest = EXCLUDED.manifest, "
                "n_docs = EXCLUDED.n_docs, total_len = EXCLUDED.total_len, updated = now()",
                (corpus, gen_id, json.dumps(manifest_for(n_docs)), n_docs, total_len),
            )
            return int(n_docs)

        def new_ids(conn) -> list[int]:
            if not new_chunks:
                return []
            return [r[0] for r in conn.execute(
                "SELECT nextval('agro_chunk_id_seq') FROM generate_series(1, %s)", (len(new_chunks),)
            )]

        def publish_in_place(conn) -> int:
            """An incremental refresh: the changed files' rows out, the new ones in, df adjusted."""
            self._ensure_partitions(conn, corpus, dim)
            removed_df: Counter = Counter()
            if drop_paths:
                old = conn.execute(
                    "DELETE FROM agro_chunks WHERE corpus = %s AND path = ANY(%s) "
                    "RETURNING id, path, symbol, text", (corpus, drop_paths),
                ).fetchall()
                terms, ids = [], []
                for cid, path, symbol, text in old:
                    tc = Counter(document_tokens(Chunk(path, 0, 0, "", symbol, text, "")))
                    removed_df.update(tc.keys())
                    terms.extend(tc.keys())
                    ids.extend([cid] * len(tc))
                if terms:
                    conn.execute(
                        "DELETE FROM agro_postings p USING unnest(%s::text[], %s::bigint[]) AS d(term, chunk_id) "
                        "WHERE p.corpus = %s AND p.term = d.term AND p.chunk_id = d.chunk_id", (terms, ids, corpus),
                    )
            ids = new_ids(conn)
            n_old, len_old = conn.execute(
                "SELECT count(*), coalesce(sum(doc_len), 0) FROM agro_chunks WHERE corpus = %s", (corpus,)
            ).fetchone()
            new_len = sum(sum(tc.values()) for tc in toks)
            avgdl = (len_old + new_len) / max(1, n_old + len(new_chunks))
            _copy_chunks(conn, "agro_chunks", corpus, ids, new_chunks, toks, vecs, dim)
            delta = _copy_postings(conn, "agro_postings", corpus, ids, toks, rs_k1, rs_b, avgdl)
            delta.subtract(removed_df)
            changes = [(t_, d) for t_, d in delta.items() if d]
            if changes:
                conn.execute(
                    "INSERT INTO agro_terms (corpus, term, df) SELECT %s, t, d FROM unnest(%s::text[], %s::int[]) AS x(t, d) "
                    "ON CONFLICT (corpus, term) DO UPDATE SET df = agro_terms.df + EXCLUDED.df",
                    (corpus, [c[0] for c in changes], [c[1] for c in changes]),
                )
                conn.execute("DELETE FROM agro_terms WHERE corpus = %s AND df <= 0", (corpus,))
            return upsert_corpus(conn, "agro_chunks")

        def publish_bulk(conn) -> int:
            """A full build: load fresh, unindexed tables, index them once (much faster than maintaining HNSW row
            by row), then swap them in as the corpus' partitions. One transaction: readers keep the old
            partitions until the swap, which holds its locks only for the detach/attach at the end."""
            self._ensure_partitions(conn, corpus, dim)  # the parent's indexes must exist before the attach
            conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
            suffix = _partition_suffix(corpus)
            tag = gen_id.replace("-", "_").lower()
            lit = conn.execute("SELECT quote_literal(%s)", (corpus,)).fetchone()[0]
            fresh = {t: f"{t}_{suffix}_n{tag[-6:]}" for t in _PARTITIONED}
            for t, name in fresh.items():
                conn.execute(f"CREATE TABLE {name} (LIKE {t} INCLUDING DEFAULTS, CHECK (corpus = {lit}))")
            ids = new_ids(conn)
            _copy_chunks(conn, fresh["agro_chunks"], corpus, ids, new_chunks, toks, vecs, dim)
            avgdl = sum(sum(tc.values()) for tc in toks) / max(1, len(toks))
            df = _copy_postings(conn, fresh["agro_postings"], corpus, ids, toks, rs_k1, rs_b, avgdl)
            with conn.cursor().copy(f"COPY {fresh['agro_terms']} (corpus, term, df) FROM STDIN WITH (FORMAT BINARY)") as cp:
                cp.set_types(["text", "text", "int4"])
                for term, n in df.items():
                    cp.write_row((corpus, term, n))
            ch, po, te = fresh["agro_chunks"], fresh["agro_postings"], fresh["agro_terms"]
            conn.execute(f"ALTER TABLE {ch} ADD PRIMARY KEY (corpus, id)")
            conn.execute(f"CREATE INDEX ON {ch} (corpus, path)")
            conn.execute(f"CREATE INDEX ON {ch} (corpus, hash)")
            conn.execute(f"CREATE INDEX ON {ch} USING hnsw ((embedding::vector({dim})) vector_cosine_ops) "
                         f"{_hnsw_with(retrieval_settings)} WHERE embed_dim = {dim}")
            conn.execute(f"ALTER TABLE {po} ADD PRIMARY KEY (corpus, term, chunk_id) INCLUDE (tf, dl)")
            conn.execute(f"CREATE INDEX ON {po} (corpus, term, w DESC) INCLUDE (chunk_id)")
            conn.execute(f"ALTER TABLE {te} ADD PRIMARY KEY (corpus, term)")
            conn.execute("SET LOCAL lock_timeout = '60s'")
            for t, name in fresh.items():
                conn.execute(f"DROP TABLE IF EXISTS {t}_{suffix}")  # the old partition (detached by the drop)
                conn.execute(f"ALTER TABLE {name} RENAME TO {t}_{suffix}")
                conn.execute(f"ALTER TABLE {t} ATTACH PARTITION {t}_{suffix} FOR VALUES IN ({lit})")
            return upsert_corpus(conn, "agro_chunks")

        n_docs = self.db.write(publish_bulk if prev is None else publish_in_place, "index publish")
        if prev is None or len(new_chunks) > 1000:
            self._analyze(corpus)
        return n_docs

    def _ensure_partitions(self, conn, corpus: str, dim: int) -> None:
        """One partition per corpus in each data table, and an HNSW index for the embedding dimension."""
        suffix = _partition_suffix(corpus)
        for table in _PARTITIONED:
            exists = conn.execute("SELECT to_regclass(%s)", (f"{table}_{suffix}",)).fetchone()[0]
            if exists is None:
                lit = conn.execute("SELECT quote_literal(%s)", (corpus,)).fetchone()[0]
                conn.execute(f"CREATE TABLE {table}_{suffix} PARTITION OF {table} FOR VALUES IN ({lit})")
        if dim not in self._hnsw_dims:
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS agro_chunks_hnsw_{dim} ON agro_chunks USING hnsw "
                f"((embedding::vector({dim})) vector_cosine_ops) WHERE embed_dim = {dim}"
            )
            self._hnsw_dims.add(dim)

    def _analyze(self, corpus: str) -> None:
        """Fresh planner statistics and visibility map (index-only scans of the postings) after a big write."""
        suffix = _partition_suffix(corpus)
        with self.db.pool.connection() as conn:
            conn.autocommit = True
            try:
                for table in _PARTITIONED:
                    conn.execute(f"VACUUM (ANALYZE) {table}_{suffix}")
            finally:
                conn.autocommit = False


def _copy_chunks(conn, table: str, corpus: str, ids, chunks, toks, vecs, dim: int) -> None:
    with conn.cursor().copy(
        f"COPY {table} (corpus, id, path, start_line, end_line, language, symbol, hash, text, doc_len, "
        "embed_dim, embedding) FROM STDIN WITH (FORMAT BINARY)"
    ) as cp:
        cp.set_types(["text", "int8", "text", "int4", "int4", "text", "text", "text", "text", "int4", "int4", "vector"])
        for cid, c, tc, v in zip(ids, chunks, toks, vecs):
            cp.write_row((corpus, cid, c.path, c.start_line, c.end_line, c.language, c.symbol, c.hash,
                          c.text.replace("\x00", "\ufffd"), sum(tc.values()), dim, v))


def _copy_postings(conn, table: str, corpus: str, ids, toks, k1: float, b: float, avgdl: float) -> Counter:
    """COPY the postings of the new chunks with their BM25 term weight ``w`` (everything but the IDF, which moves
    with every refresh and is applied at query time); returns their document frequencies."""
    df: Counter = Counter()
    avgdl = avgdl or 1.0
    with conn.cursor().copy(f"COPY {table} (corpus, term, chunk_id, tf, dl, w) FROM STDIN WITH (FORMAT BINARY)") as cp:
        cp.set_types(["text", "text", "int8", "int4", "int4", "float4"])
        for cid, tc in zip(ids, toks):
            dl = sum(tc.values())
            norm = k1 * (1 - b + b * dl / avgdl)
            for term, tf in tc.items():
                cp.write_row((corpus, term, cid, tf, dl, tf * (k1 + 1) / (tf + norm)))
            df.update(tc.keys())
    return df


_PGVECTOR_HNSW_DEFAULTS = {"m": 16, "ef_construction": 64}  # what indexes built before the settings existed use


def _hnsw_with(settings: RetrievalSettings) -> str:
    """The HNSW graph's build parameters (validated integers, so safe to inline)."""
    return f"WITH (m = {int(settings.hnsw_m)}, ef_construction = {int(settings.hnsw_ef_construction)})"


def _as_array(v) -> np.ndarray:
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)


def _search_sql(mode: str, dim: int, filt: str, per_term: bool = False) -> str:
    """The hybrid query. Lexical: BM25 (lucene IDF) over the ``max_terms`` rarest known query terms, like the
    embedded backend. Dense: HNSW cosine with iterative scan (so filters still fill k). Fused: RRF."""
    lex_filter = ""
    per_term_sql = " ORDER BY p.w DESC LIMIT %(per_term)s" if per_term and not filt else ""
    if filt:
        lex_filter = f" AND EXISTS (SELECT 1 FROM agro_chunks c WHERE c.corpus = %(corpus)s AND c.id = p.chunk_id{filt})"
    parts = [
        """stats AS (
            SELECT n_docs, greatest(total_len::float8 / greatest(n_docs, 1), 1e-9) AS avgdl, generation
            FROM agro_corpora WHERE corpus = %(corpus)s)""",
    ]
    if mode in ("bm25", "fused"):
        parts += [
            """qt AS (
                SELECT q.term, q.qtf, ln(1 + (s.n_docs - t.df + 0.5) / (t.df + 0.5)) AS idf
                FROM unnest(%(terms)s::text[], %(qtf)s::int[]) AS q(term, qtf)
                JOIN agro_terms t ON t.corpus = %(corpus)s AND t.term = q.term
                CROSS JOIN stats s
                ORDER BY idf DESC, q.term LIMIT %(max_terms)s)""",
            f"""lex AS (
                SELECT p.chunk_id AS id, sum(qt.qtf * qt.idf * p.w) AS score
                FROM qt CROSS JOIN LATERAL (
                    SELECT p.chunk_id, p.w FROM agro_postings p
                    WHERE p.corpus = %(corpus)s AND p.term = qt.term{lex_filter}
                   {per_term_sql}) p
                GROUP BY p.chunk_id
                ORDER BY score DESC, p.chunk_id LIMIT %(n_lex)s)""",
            "lr AS (SELECT id, score, row_number() OVER (ORDER BY score DESC, id) AS r FROM lex)",
        ]
    else:
        parts.append("lr AS (SELECT NULL::bigint AS id, NULL::float8 AS score, NULL::bigint AS r WHERE false)")
    if mode in ("dense", "fused"):
        parts += [
            f"""dense AS (
                SELECT c.id, c.embedding::vector({dim}) <=> %(qv)s::vector({dim}) AS dist
                FROM agro_chunks c
                WHERE c.corpus = %(corpus)s AND c.embed_dim = {dim}{filt}
                ORDER BY c.embedding::vector({dim}) <=> %(qv)s::vector({dim}) LIMIT %(n_dense)s)""",
            "dr AS (SELECT id, dist, row_number() OVER (ORDER BY dist, id) AS r FROM dense)",
        ]
    else:
        parts.append("dr AS (SELECT NULL::bigint AS id, NULL::float8 AS dist, NULL::bigint AS r WHERE false)")
    if mode == "bm25":
        score = "lr.score"
    elif mode == "dense":
        score = "1 - dr.dist"
    else:
        score = "coalesce(1.0 / (%(rrf_k)s + lr.r), 0) + %(w_dense)s::float8 * coalesce(1.0 / (%(rrf_k)s + dr.r), 0)"
    parts.append(
        f"""fused AS (
            SELECT coalesce(lr.id, dr.id) AS id, ({score})::float8 AS score, lr.r AS bm25_rank, lr.score AS bm25_score,
                   dr.r AS dense_rank, 1 - dr.dist AS dense_score
            FROM lr FULL JOIN dr ON lr.id = dr.id
            ORDER BY 2 DESC, coalesce(lr.r, 2147483647), coalesce(dr.r, 2147483647) LIMIT %(k)s)"""
    )
    body = "WITH " + ",\n".join(parts)
    used_terms = "(SELECT array_agg(term) FROM qt)" if mode in ("bm25", "fused") else "NULL::text[]"
    return body + f"""
        SELECT f.id, f.score, f.bm25_rank::int, f.bm25_score, f.dense_rank::int, f.dense_score,
               c.path, c.start_line, c.end_line, c.language, c.symbol, c.text, c.hash,
               (SELECT generation FROM stats), (SELECT count(*) FROM lr), (SELECT count(*) FROM dr), {used_terms}
        FROM fused f JOIN agro_chunks c ON c.corpus = %(corpus)s AND c.id = f.id
        ORDER BY f.score DESC, coalesce(f.bm25_rank, 2147483647), coalesce(f.dense_rank, 2147483647)"""
