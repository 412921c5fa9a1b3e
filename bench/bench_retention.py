"""Size of ``agro.db`` after N searches' worth of query events, with and without compaction (issue 20, finding 10).

Usage (from the repository root, venv active)::

    python bench/bench_retention.py                     # 100,000 searches over 180 days, 90 days kept
    python bench/bench_retention.py --searches 20000 --days 120 --retention-days 30

Each search is written through the store API (``query_event_from_hits`` + ``insert_event``, what ``log_query``
does, with its timestamp spread uniformly over ``--days``): a query of 30-200 characters, 10 ranked hits drawn
from a pool of ``--chunks`` chunks of real code (this repository's Python files, 40-line windows), and feedback on
``--feedback`` of the searches. Then ``training.releases.retention.compact`` runs with ``--retention-days`` and ``VACUUM``
(what ``agro db compact`` does). Sizes are of ``agro.db`` + its WAL after a checkpoint. Figures go to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.types import Chunk, Hit  # noqa: E402
from training.releases.retention import DAY_SEC, compact  # noqa: E402
from training.events.records import query_event_from_hits  # noqa: E402
from training.events.store import open_event_store  # noqa: E402

WORDS = ("where is the token validated retry backoff connection pool cache eviction parse config load index "
         "search rank feedback http server route handler error timeout write read lock file path user auth").split()


def _chunks(limit: int) -> list[Chunk]:
    out: list[Chunk] = []
    for path in sorted(p for p in ROOT.glob("**/*.py") if ".venv" not in p.parts):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        for start in range(0, len(lines), 40):
            text = "".join(lines[start:start + 40])
            out.append(Chunk.make(path.relative_to(ROOT).as_posix(), start + 1, start + 40, "python", None, text))
            if len(out) >= limit:
                return out
    return out


def _size(home: Path) -> int:
    return sum(p.stat().st_size for p in (home / "agro.db", home / "agro.db-wal") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--searches", type=int, default=100_000)
    ap.add_argument("--days", type=float, default=180.0, help="the searches are spread over this many days")
    ap.add_argument("--retention-days", type=float, default=90.0)
    ap.add_argument("--chunks", type=int, default=5000, help="distinct chunks the hits are drawn from")
    ap.add_argument("--feedback", type=float, default=0.02, help="fraction of searches that get feedback")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    pool = _chunks(args.chunks)
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="agro-retention-") as tmp:
        home = Path(tmp)
        store = open_event_store(home)
        t0 = time.perf_counter()
        with_feedback = 0
        for i in range(args.searches):
            query = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))[:200]
            hits = [Hit(c, fused_score=0.03, score=0.9 - r / 20, bm25_rank=r, dense_rank=r)
                    for r, c in enumerate(rng.sample(pool, 10), start=1)]
            event, texts = query_event_from_hits("bench", query, 10, hits, reranker_model="rel-1",
                                                 reranking_used=True, fallback_reason=None, latency_ms=80.0,
                                                 index_generation="g1")
            event = dataclasses.replace(event, ts=now - rng.uniform(0, args.days) * DAY_SEC)
            store.insert_event(event, texts, durable=False)
            if rng.random() < args.feedback:
                hit = event.results[0]
                store.add_feedback(event.event_id, "used", doc_id=hit.doc_id, path=hit.path,
                                   start_line=hit.start_line, end_line=hit.end_line)
                with_feedback += 1
        store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        written = time.perf_counter() - t0
        before, counts = _size(home), store.counts()
        t0 = time.perf_counter()
        out = compact(store, home, args.retention_days, vacuum=True)
        took = time.perf_counter() - t0
        after, left = _size(home), store.counts()
        store.close()

    print(f"{args.searches:,} searches over {args.days:g} days ({with_feedback:,} with feedback), 10 hits each, "
          f"{len(pool):,} distinct chunks; written in {written:.0f}s")
    print(f"without compaction: agro.db {before / 1e6:.1f} MB  ({counts['query_events']:,} events, "
          f"{counts['query_results']:,} results, {counts['chunk_texts']:,} chunk texts)")
    print(f"after compaction ({args.retention_days:g} days kept, VACUUM): agro.db {after / 1e6:.1f} MB  "
          f"({left['query_events']:,} events, {left['query_results']:,} results, {left['chunk_texts']:,} chunk "
          f"texts); removed {out['events']:,} events in {took:.1f}s")


if __name__ == "__main__":
    main()
