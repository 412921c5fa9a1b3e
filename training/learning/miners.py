"""Triplet miners: feedback, golden.json and the corpus bootstrap, plus the seeded held-out split by query.

Every miner returns :class:`Triplet` rows (the seeds' format plus the corpus they come from). Mining from feedback is
recomputed from the whole store on every run, so feedback that arrives late is picked up by the next run. The split
is by query and seeded: a query hashes to the same side on every run, so a held-out question never becomes training
data later. Rules in DESIGN.md section 6.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from retrieval.types import located_text, parse_doc_id
from training.evaluation.metrics import path_matches

__all__ = [
    "POSITIVE_SIGNALS",
    "NEGATIVE_SIGNALS",
    "SYNTHETIC_SOURCES",
    "MinedSplit",
    "Triplet",
    "data_hash",
    "extract_doc_pair",
    "extract_usage_pairs",
    "heldout_questions",
    "mine_bootstrap",
    "mine_feedback",
    "mine_golden",
    "mine_identifiers",
    "split_identifier",
    "extract_identifier_pair",
    "query_key",
    "split_by_query",
]

logger = logging.getLogger(__name__)

POSITIVE_SIGNALS = frozenset({"correct_location", "used", "click", "thumbs_up"})
# questions a program wrote (from the code itself); every other source's questions were written by people (commit
# messages, golden.json, logged searches with feedback)
SYNTHETIC_SOURCES = frozenset({"corpus_bootstrap", "corpus_usage", "corpus_identifier"})
NEGATIVE_SIGNALS = frozenset({"thumbs_down"})

# (corpus, path, start, end) -> (doc_id, text) of the indexed chunk that best covers the span, or None
ChunkLookup = Callable[[str, str, int, int], "tuple[str, str] | None"]
# (query, corpus) -> ranked hits (objects with .chunk, like retrieval.types.Hit)
RankFn = Callable[[str, str], Sequence[Any]]


@dataclass(slots=True)
class Triplet:
    """One query with one positive and its negatives (the seeds' triplet format, plus ``corpus``)."""

    query: str
    positive_text: str
    positive_doc_id: str
    negative_texts: list[str]
    negative_doc_ids: list[str]
    source: str
    corpus: str = ""

    def to_dict(self, with_corpus: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "query": self.query,
            "positive_text": self.positive_text,
            "positive_doc_id": self.positive_doc_id,
            "negative_texts": list(self.negative_texts),
            "negative_doc_ids": list(self.negative_doc_ids),
            "source": self.source,
        }
        if with_corpus:
            d["corpus"] = self.corpus
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Triplet:
        return cls(
            d["query"], d["positive_text"], d["positive_doc_id"], list(d.get("negative_texts") or []),
            list(d.get("negative_doc_ids") or []), d.get("source", "unknown"), d.get("corpus", ""),
        )


def query_key(corpus: str, query: str) -> str:
    """The split unit: the corpus and the query with case and whitespace normalised."""
    return f"{corpus}\x1f{' '.join(query.lower().split())}"


def query_hash(key: str) -> str:
    """A question's short stable fingerprint (sha256 of its :func:`query_key`, 16 hex digits), as manifests record
    which questions a run was held out on or trained on without storing their text."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def question_hashes(triplets: Iterable[Triplet]) -> list[str]:
    """The sorted :func:`query_hash` of every distinct question among ``triplets``."""
    return sorted({query_hash(query_key(t.corpus, t.query)) for t in triplets})


def data_hash(triplets: Iterable[Triplet]) -> str:
    """sha256 of the triplets' canonical JSON (order-sensitive), recorded in run and release manifests."""
    h = hashlib.sha256()
    for t in triplets:
        h.update(json.dumps(t.to_dict(with_corpus=True), sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------- feedback


@dataclass(slots=True)
class _Judgement:
    positive: bool
    ts: float


def _signal_polarity(signal: str, rating: int | None) -> bool | None:
    if signal in POSITIVE_SIGNALS:
        return True
    if signal in NEGATIVE_SIGNALS:
        return False
    if signal == "rating" and rating is not None:
        if rating >= 4:
            return True
        if rating <= 2:
            return False
    return None


def mine_feedback(
    store: Any,
    *,
    corpus: str | None = None,
    negatives_per_query: int = 4,
    chunk_lookup: ChunkLookup | None = None,
    fill_negatives: bool = True,
) -> list[Triplet]:
    """Triplets from every query event that has feedback, recomputed from the whole store.

    Per event: positives are hits with ``used``/``click``/``thumbs_up``/rating >= 4 and ``correct_location`` spans
    (several positives all stay positives); explicit negatives are ``thumbs_down`` and rating <= 2; the latest
    explicit signal on a hit wins. Skip-above negatives are the hits ranked above a positive that got no positive
    signal (a ``correct_location`` missing from the results lies below every hit). Negatives are explicit ones
    first, then skip-above by rank; with ``fill_negatives``, remaining slots take unlabelled hits ranked below the
    positive (weaker negatives, so a positive at rank 1 still teaches a contrast).

    Args:
        store: the :class:`training.events.store.EventStore`.
        corpus: only this corpus.
        negatives_per_query: cap on negatives per triplet.
        chunk_lookup: finds the indexed text of a ``correct_location`` that was not among the results; without
            it (or when it finds nothing) such feedback is skipped with a log line.
        fill_negatives: top up with unlabelled lower-ranked hits.
    """
    by_event: dict[str, list[Any]] = {}
    for fb in store.iter_feedback(corpus=corpus):
        by_event.setdefault(fb.event_id, []).append(fb)
    out: list[Triplet] = []
    skipped = 0
    for event_id, fbs in by_event.items():
        event = store.get_event(event_id)
        if event is None:
            continue
        raw = store.chunk_texts(r.chunk_hash for r in event.results if r.chunk_hash)
        symbols = store.chunk_symbols(raw)
        # What the reranker will score: each result's text under its location header.
        texts = {r.chunk_hash: located_text(r.path, symbols.get(r.chunk_hash), raw[r.chunk_hash])
                 for r in event.results if r.chunk_hash in raw}
        judged: dict[str, _Judgement] = {}
        extra_pos: dict[str, str] = {}  # correct_location outside the results: doc_id -> text
        for fb in sorted(fbs, key=lambda f: f.ts):
            pol = _signal_polarity(fb.signal, fb.rating)
            if pol is None or not fb.doc_id:
                continue
            if fb.signal == "correct_location":
                hit = event.result_by_doc_id(fb.doc_id) or _overlapping_result(event, fb)
                if hit is not None:
                    judged[hit.doc_id] = _Judgement(True, fb.ts)
                    continue
                found = chunk_lookup(event.corpus, fb.path, fb.start_line, fb.end_line) if chunk_lookup else None
                if found is None:
                    skipped += 1
                    continue
                doc_id, text = found
                if event.result_by_doc_id(doc_id) is not None:
                    judged[doc_id] = _Judgement(True, fb.ts)
                else:
                    extra_pos[doc_id] = text
                continue
            prev = judged.get(fb.doc_id)
            if prev is None or fb.ts >= prev.ts:
                judged[fb.doc_id] = _Judgement(pol, fb.ts)
        ranked = [r for r in event.results if r.chunk_hash in texts]
        positives = [(r.doc_id, texts[r.chunk_hash], r.rank) for r in ranked
                     if judged.get(r.doc_id) and judged[r.doc_id].positive]
        positives += [(d, t, 10**9) for d, t in extra_pos.items()]
        if not positives:
            continue
        positive_ids = {p[0] for p in positives}
        explicit_neg = [r for r in ranked if r.doc_id in judged and not judged[r.doc_id].positive]
        for doc_id, text, rank in positives:
            negs = list(explicit_neg)
            negs += [r for r in ranked if r.rank < rank and r.doc_id not in judged and r.doc_id not in positive_ids]
            if fill_negatives:
                negs += [r for r in ranked if r.rank > rank and r.doc_id not in judged]
            seen: set[str] = set()
            chosen = []
            for r in negs:
                if r.doc_id in seen or r.doc_id in positive_ids or texts[r.chunk_hash] == text:
                    continue
                seen.add(r.doc_id)
                chosen.append(r)
                if len(chosen) >= negatives_per_query:
                    break
            out.append(Triplet(
                event.query, text, doc_id, [texts[r.chunk_hash] for r in chosen], [r.doc_id for r in chosen],
                "click_feedback", event.corpus,
            ))
    if skipped:
        logger.info("feedback miner: %d correct_location signal(s) had no indexed chunk to learn from", skipped)
    return out


def _overlapping_result(event: Any, fb: Any) -> Any:
    """The result of ``event`` that overlaps the feedback span most (same path), or None."""
    if fb.path is None or fb.start_line is None:
        return None
    best, best_overlap = None, 0
    for r in event.results:
        if r.path != fb.path or r.start_line is None:
            continue
        overlap = min(r.end_line, fb.end_line) - max(r.start_line, fb.start_line) + 1
        if overlap > best_overlap:
            best, best_overlap = r, overlap
    # Only a result that mostly covers the stated span counts as the same location.
    if best is not None and best_overlap * 2 >= (fb.end_line - fb.start_line + 1):
        return best
    return None


# ------------------------------------------------------------------------------------------------- golden


def _located(chunk: Any) -> str:
    return located_text(chunk.path, chunk.symbol, chunk.text)


def _matches_golden(item: Any, chunk: Any) -> bool:
    for span in item.expect_spans:
        if path_matches(span.path, chunk.path) and chunk.start_line <= span.end_line and span.start_line <= chunk.end_line:
            return True
    return any(path_matches(p, chunk.path) for p in item.expect_paths)


def mine_golden(items: Iterable[Any], rank_fn: RankFn, *, negatives_per_query: int = 4, depth: int = 30) -> list[Triplet]:
    """Triplets from golden.json rows: retrieval's hits that match the expected paths or spans are positives,
    the top non-matching hits hard negatives. A row with no matching hit in the top ``depth`` gives nothing."""
    out: list[Triplet] = []
    for item in items:
        hits = list(rank_fn(item.q, item.repo))[:depth]
        pos = [h for h in hits if _matches_golden(item, h.chunk)]
        neg = [h for h in hits if not _matches_golden(item, h.chunk)][:negatives_per_query]
        for h in pos:
            out.append(Triplet(item.q, _located(h.chunk), h.chunk.doc_id, [_located(n.chunk) for n in neg],
                               [n.chunk.doc_id for n in neg], "golden", item.repo))
    return out


# ------------------------------------------------------------------------------------------------- bootstrap

_PY_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+\w+", re.M)
_PY_DOC = re.compile(r'[ \t]*[rRuUbB]{0,2}("""|\'\'\')(.*?)\1[ \t]*\n?', re.S)
_LINE_COMMENT = {"#": ("python", "ruby", "shell", "bash", "toml", "yaml", "r", "perl"),
                 "//": ("javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp", "c_sharp", "kotlin",
                        "swift", "scala", "php")}
_BLOCK = re.compile(r"\A[ \t]*/\*\*?(.*?)\*/[ \t]*\n?", re.S)
_MIN_WORDS = 4
_MAX_QUERY_CHARS = 400


def _first_paragraph(doc: str) -> str:
    lines = [ln.strip().lstrip("*").strip() for ln in doc.strip().splitlines()]
    para: list[str] = []
    for ln in lines:
        if not ln:
            if para:
                break
            continue
        if ln.startswith(("@", ":param", ":return", "Args:", "Returns:", "Raises:")):
            break
        para.append(ln)
    return " ".join(" ".join(para).split())[:_MAX_QUERY_CHARS]


def extract_doc_pair(text: str, language: str) -> tuple[str, str] | None:
    """(first paragraph of the docstring or leading comment, the code with that text removed), or None.

    Python: the first docstring right after the first ``def``/``class`` line of the chunk (or a module docstring
    at its top). Other languages: a ``/** … */`` block or a run of ``//`` / ``#`` comment lines right before the
    first code line.
    """
    if language == "python":
        m = _PY_DEF.search(text)
        starts = []
        if m is not None:
            # The header may span lines (long signatures): the docstring follows the line ending with ':'.
            colon = re.compile(r":[ \t]*(#.*)?\n").search(text, m.end())
            if colon is not None:
                starts.append(colon.end())
        starts.append(0)
        for start in starts:
            dm = _PY_DOC.match(text, start)
            if dm is None:
                continue
            query = _first_paragraph(dm.group(2))
            code = text[: dm.start()] + text[dm.end():]
            if len(query.split()) >= _MIN_WORDS and _code_lines(code) >= 2:
                return query, code
        return None
    bm = _BLOCK.match(text)
    if bm is not None:
        query, code = _first_paragraph(bm.group(1)), text[bm.end():]
    else:
        marker = next((mk for mk, langs in _LINE_COMMENT.items() if language in langs), None)
        if marker is None:
            return None
        lines = text.splitlines(keepends=True)
        n = 0
        while n < len(lines) and lines[n].lstrip().startswith(marker):
            n += 1
        if n == 0:
            return None
        doc = "".join(ln.lstrip()[len(marker):].lstrip("/!").strip() + "\n" for ln in lines[:n])
        query, code = _first_paragraph(doc), "".join(lines[n:])
    if len(query.split()) >= _MIN_WORDS and _code_lines(code) >= 2:
        return query, code
    return None


def _code_lines(code: str) -> int:
    return sum(1 for ln in code.splitlines() if ln.strip())


# a name followed by "(": a call, or a class being instantiated
_CALLED = re.compile(r"(?<![\w.])(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*)\s*\(")
_DEF_HEAD = r"\b(?:def|class|function|func|fn|struct|interface|trait|type|enum)\s+{name}\b"
_USAGE_MIN_NAME = 4
_USAGE_BEFORE, _USAGE_AFTER = 3, 4


def _call_snippet(text: str, name: str) -> str | None:
    """The lines around the first call of ``name`` in ``text`` (dedented), or None if there is none."""
    lines = text.splitlines()
    pat = re.compile(rf"(?<![\w]){re.escape(name)}\s*\(")
    for i, ln in enumerate(lines):
        stripped = ln.lstrip()
        if stripped.startswith(("#", "//", "*", "def ", "class ")) or not pat.search(ln):
            continue
        window = [w for w in lines[max(0, i - _USAGE_BEFORE): i + _USAGE_AFTER + 1] if w.strip()]
        indent = min(len(w) - len(w.lstrip()) for w in window)
        snippet = "\n".join(w[indent:] for w in window)
        return snippet[:_MAX_QUERY_CHARS]
    return None


def extract_usage_pairs(chunks: Sequence[Any], seed: int = 13) -> list[tuple[str, Any]]:
    """(a snippet of code that calls a function or class, the chunk that defines it) pairs, one per definition.

    These questions look like what a user pastes (a few lines that use the API, an error site) rather than like
    documentation: their answer is the definition, not the call site, which retrieval ranks first because it holds
    the snippet verbatim. Only names defined by exactly one chunk of the corpus count (no guessing which of
    several ``save`` methods a call means), at least 4 characters, not dunder; the call site is a seeded pick
    among the chunks of other files that call it (the same file if no other does).
    """
    defs: dict[str, list[Any]] = {}
    for c in chunks:
        if not c.symbol:
            continue
        name = c.symbol.rsplit(".", 1)[-1]
        if len(name) < _USAGE_MIN_NAME or name.startswith("__"):
            continue
        if re.search(_DEF_HEAD.format(name=re.escape(name)), c.text):
            defs.setdefault(name, []).append(c)
    unique = {n: cs[0] for n, cs in defs.items() if len(cs) == 1}
    callers: dict[str, list[Any]] = {}
    for c in chunks:
        for name in {m.group(1) for m in _CALLED.finditer(c.text)} & unique.keys():
            d = unique[name]
            if c.path == d.path and c.start_line <= d.end_line and d.start_line <= c.end_line:
                continue
            callers.setdefault(name, []).append(c)
    rng = random.Random(seed)
    out: list[tuple[str, Any]] = []
    for name in sorted(callers):
        d = unique[name]
        cs = callers[name]
        others = [c for c in cs if c.path != d.path]
        for c in rng.sample(others or cs, len(others or cs)):
            snippet = _call_snippet(c.text, name)
            if snippet is not None and _code_lines(snippet) >= 2 and len(snippet.split()) >= _MIN_WORDS:
                out.append((snippet, d))
                break
    return out


_SIG = re.compile(r"^[ \t]*(?:(?:pub|export|public|private|static|async|default)\s+)*"
                  r"(?:def|function|func|fn)\s+(?:\([^)]*\)\s*)?(\w+)\s*(\([^)]*\)?[^:{\n]*)", re.M)
_WORD_SPLIT = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def split_identifier(name: str) -> list[str]:
    """``parse_HTTPHeaderLinks`` -> ``["parse", "http", "header", "links"]`` (snake_case and camelCase)."""
    return [w.lower() for w in _WORD_SPLIT.findall(name)]


def extract_identifier_pair(text: str) -> tuple[str, str] | None:
    """(the definition's split name and its signature, its body without the signature line), or None.

    For code with neither docstrings nor history: ``def parse_header_links(value: str) -> list:`` gives the question
    ``parse header links (value: str) -> list``. Names of fewer than two words, dunders and tests give nothing.
    """
    m = _SIG.search(text)
    if m is None:
        return None
    name, sig = m.group(1), " ".join(m.group(2).split()).rstrip(":{ ")
    words = split_identifier(name)
    if len(words) < 2 or name.startswith("__") or words[0] == "test":
        return None
    line_end = text.find("\n", m.end())
    body = text[line_end + 1:] if line_end >= 0 else ""
    if _code_lines(body) < 2:
        return None
    return f"{' '.join(words)} {sig}"[:_MAX_QUERY_CHARS], body


def mine_identifiers(chunks: Sequence[Any], rank_fn: RankFn | None, corpus: str, *, cap: int = 3000,
                     negatives_per_query: int = 4, seed: int = 13) -> list[Triplet]:
    """Identifier-derived pairs (:func:`extract_identifier_pair`), source ``corpus_identifier``: the positive is
    the body under its path only (no symbol), negatives are retrieval's other hits for the question."""
    pairs, seen = [], set()
    for c in chunks:
        got = extract_identifier_pair(c.text)
        if got is None or got[0] in seen:
            continue
        seen.add(got[0])
        pairs.append((got[0], got[1], c))
    if len(pairs) > cap:
        pairs = random.Random(seed).sample(pairs, cap)
    out = []
    for q, body, c in pairs:
        hits = [h.chunk for h in rank_fn(q, corpus)] if rank_fn is not None else []
        negs = [n for n in hits if n.doc_id != c.doc_id][:negatives_per_query]
        out.append(Triplet(q, located_text(c.path, None, body), c.doc_id, [_located(n) for n in negs],
                           [n.doc_id for n in negs], "corpus_identifier", corpus))
    return out


def mine_bootstrap(
    chunks: Sequence[Any],
    rank_fn: RankFn | None,
    corpus: str,
    *,
    cap: int = 3000,
    usage_share: float = 0.0,
    negatives_per_query: int = 4,
    seed: int = 13,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> list[Triplet]:
    """Corpus bootstrap: (docstring or leading comment, the code it documents with that text removed) pairs, and
    with ``usage_share`` > 0, (call-site snippet, the definition it calls) pairs (:func:`extract_usage_pairs`).

    Pairs are deduplicated by query and by positive text, sampled down to ``cap`` with ``seed`` (usage pairs take
    up to ``usage_share`` of it; either kind fills what the other lacks), and given hard negatives from
    ``rank_fn`` (fused retrieval for the query), skipping any chunk of the same file that overlaps the positive.
    Without ``rank_fn``, negatives are random chunks of other files. Docstring pairs have source
    ``corpus_bootstrap``, usage pairs ``corpus_usage``.
    """
    pairs: list[tuple[str, str, Any]] = []
    seen_q: set[str] = set()
    seen_code: set[str] = set()
    for c in chunks:
        got = extract_doc_pair(c.text, c.language)
        if got is None:
            continue
        q, code = got
        qk = " ".join(q.lower().split())
        ck = hashlib.sha256(" ".join(code.split()).encode("utf-8", "surrogatepass")).hexdigest()
        if qk in seen_q or ck in seen_code:
            continue
        seen_q.add(qk)
        seen_code.add(ck)
        pairs.append((q, code, c))
    rng = random.Random(seed)
    usage: list[tuple[str, str, Any]] = []
    if usage_share > 0:
        for q, d in extract_usage_pairs(chunks, seed):
            qk = " ".join(q.lower().split())
            if qk not in seen_q:
                seen_q.add(qk)
                usage.append((q, d.text, d))
    n_usage = min(len(usage), max(round(cap * usage_share), cap - len(pairs)))
    n_doc = min(len(pairs), cap - n_usage)
    pairs = [(q, code, c, "corpus_bootstrap") for q, code, c in
             (rng.sample(pairs, n_doc) if len(pairs) > n_doc else pairs)]
    pairs += [(q, code, c, "corpus_usage") for q, code, c in
              (rng.sample(usage, n_usage) if len(usage) > n_usage else usage)]
    logger.info("bootstrap miner: %d (doc, code) and %d (call site, definition) pairs from %d chunks of %s",
                n_doc, n_usage, len(chunks), corpus)
    out: list[Triplet] = []
    for i, (q, code, c, source) in enumerate(pairs, 1):
        if cancelled is not None and cancelled():
            break
        if rank_fn is not None:
            cands = [h.chunk for h in rank_fn(q, corpus)]
        else:
            cands = [chunks[j] for j in rng.sample(range(len(chunks)), min(len(chunks), 4 * negatives_per_query))]
        negs = [n for n in cands if not (n.path == c.path and n.start_line <= c.end_line and c.start_line <= n.end_line)]
        negs = negs[:negatives_per_query]
        out.append(Triplet(q, located_text(c.path, c.symbol, code), c.doc_id, [_located(n) for n in negs],
                           [n.doc_id for n in negs],
                           source, corpus))
        if progress is not None:
            progress(i, len(pairs))
    return out


# ------------------------------------------------------------------------------------------------- split


@dataclass(slots=True)
class MinedSplit:
    """Training and held-out triplets, split by query, and what the run manifest records about the split."""

    train: list[Triplet]
    heldout: list[Triplet]
    info: dict[str, Any] = field(default_factory=dict)


def _side(key: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}\x1f{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_by_query(triplets: Sequence[Triplet], fraction: float, seed: int,
                   fixed: dict[str, bool] | None = None) -> MinedSplit:
    """A seeded split by query: a query lands on the held-out side when its seeded hash is below ``fraction``.

    The side of a query depends only on the seed and the query (not on what else was mined), so a held-out question
    stays held out on every later run with the same seed. ``fixed`` (query key -> held out?) overrides the hash for
    its queries: the history miner's time split (the newest commits are held out).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"split_by_query expects 0 < fraction < 1, but got {fraction}")
    train, held = [], []
    held_keys: set[str] = set()
    train_keys: set[str] = set()
    for t in triplets:
        k = query_key(t.corpus, t.query)
        if (fixed[k] if fixed and k in fixed else _side(k, seed) < fraction):
            held.append(t)
            held_keys.add(k)
        else:
            train.append(t)
            train_keys.add(k)
    info = {
        "method": "sha256(seed, corpus + normalised query) < fraction"
                  + (f"; {len(fixed)} history questions split by time (newest held out)" if fixed else ""),
        "seed": seed,
        "fraction": fraction,
        "train_queries": len(train_keys),
        "heldout_queries": len(held_keys),
        "train_triplets": len(train),
        "heldout_triplets": len(held),
        "heldout_query_hashes": sorted(query_hash(k) for k in held_keys),
        "train_data_hash": data_hash(train),
        "heldout_data_hash": data_hash(held),
    }
    return MinedSplit(train, held, info)


def heldout_questions(heldout: Sequence[Triplet]) -> list[dict[str, Any]]:
    """Held-out triplets as evaluation questions: one per query, every positive of it as gold.

    Rows are ``{"qid", "query", "corpus", "gold": ["path:start-end", ...], "sources": [...]}`` for
    :func:`training.evaluation.datasets.queries_from_feedback`; ``synthetic`` is True when every triplet of the
    question came from a synthetic source (:data:`SYNTHETIC_SOURCES`), False when a person wrote it.
    """
    by_key: dict[str, dict[str, Any]] = {}
    for t in heldout:
        k = query_key(t.corpus, t.query)
        row = by_key.setdefault(k, {"query": t.query, "corpus": t.corpus, "gold": [], "sources": []})
        if t.source not in row["sources"]:
            row["sources"].append(t.source)
        if t.positive_doc_id not in row["gold"]:
            try:
                parse_doc_id(t.positive_doc_id)
            except ValueError:
                continue
            row["gold"].append(t.positive_doc_id)
    rows = [r for r in by_key.values() if r["gold"]]
    for i, r in enumerate(rows):
        r["qid"] = f"heldout-{i:04d}"
        r["synthetic"] = all(s in SYNTHETIC_SOURCES for s in r["sources"])
    return rows
