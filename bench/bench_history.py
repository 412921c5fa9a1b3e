"""Bootstrap from a repository's git history, then answer about its future: fused vs served on a history collection.

For each ``../shared/bench/history_<name>`` collection: clone its bundle with the collection's own
``tools/history_corpus.sh`` (local data only: a working tree at the split commit with the history before it), index
it, run ``agro bootstrap`` (the history miner, then train, evaluate on the newest mined commits, gate), and score the
collection's queries (messages of commits after the split; gold = the files they changed) with BM25, dense, fused,
the candidate, and what is served (the candidate if the gate promoted it, else fused). File level, as score.py.
Every run also prints where the bootstrap's time went (stage times read off its log and progress messages).

    python bench/bench_history.py --collection history_httpx [--home /tmp/agro-hist] [--out figures.json]
    python bench/bench_history.py --repo /path/to/git/work/tree    # bootstrap time only (no questions to score)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("bench_history")

# ../shared/bench beside the checkout (a worktree under wt/ looks one level higher); AGRO_BENCH_DIR overrides
BENCH = Path(os.environ.get("AGRO_BENCH_DIR") or next(
    (p / "shared" / "bench" for p in Path(__file__).resolve().parents[2:4] if (p / "shared" / "bench").is_dir()),
    Path(__file__).resolve().parents[2] / "shared" / "bench"))
METRICS = ("MRR@10", "Hit@1", "Hit@5", "Hit@10")
# the bootstrap's stages, each starting at the first log or progress message matching its pattern (in this order)
STAGES = (
    ("mine history: git log + map commits", r"^bootstrap: mining "),
    ("mine history: negatives (fused ranking)", r"^bootstrap: history: "),
    ("mine docstring/identifier pairs", r"^progress: mining "),
    ("weigh dense (retrieval grid)", r"^mined \{"),
    ("train (load, steps, save)",
     r"^dense weight on |^Loading SentenceTransformer model|^run \S+: (?:sampled|bi-encoder trains)|^progress: step "),
    ("after training (blend, run.json)", r"^run \S+ trained in "),
    ("calibrate alpha", r"^calibrating the blend weight"),
    ("evaluate held-out (gate)", r"^evaluating run "),
    ("promote", r"^gate for "),
)
_RUN_PREFIX = re.compile(r"^(?:\[[^\]]*\]\s*)+")


def cpu_sec() -> float:
    """CPU seconds of this process and its finished children (git): with one thread, about the wall time the same
    work takes on an idle core, whatever the load (wall times on a shared machine are not)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Timeline(logging.Handler):
    """Every log line (and, through :class:`TimedCtx`, every new kind of job progress message) with its wall time
    and this process's CPU time."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: list[tuple[float, float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.events.append((record.created, cpu_sec(), _RUN_PREFIX.sub("", record.getMessage())))
        except Exception:  # a log line that cannot be formatted is no stage marker
            pass

    def note(self, message: str) -> None:
        self.events.append((time.time(), cpu_sec(), message))

    def stages(self, t0: float, t1: float, c0: float, c1: float) -> dict[str, dict[str, float]]:
        """Wall and CPU seconds per stage between ``(t0, c0)`` and ``(t1, c1)`` (a stage whose marker never came
        is left out; with model kind auto only the first kind's stages are marked)."""
        marks: list[tuple[float, float, str]] = [(t0, c0, "job start (compaction)")]
        for name, pattern in STAGES:
            rx = re.compile(pattern)
            hit = next(((t, c) for t, c, m in self.events if t >= t0 and rx.search(m)), None)
            if hit is not None:
                marks.append((hit[0], hit[1], name))
        marks.sort()
        ends = [(t, c) for t, c, _ in marks[1:]] + [(t1, c1)]
        return {name: {"wall": round(end[0] - t, 1), "cpu": round(end[1] - c, 1)}
                for (t, c, name), end in zip(marks, ends)}


class TimedCtx:
    """A job context that notes the first progress message of each kind (``step 3/24`` -> ``step``) on a timeline."""

    def __init__(self, ctx, timeline: Timeline) -> None:
        self._ctx, self._tl, self._last = ctx, timeline, None

    def progress(self, fraction: float, message: str | None = None) -> None:
        kind = (message or "").split(" ", 1)[0]
        if message and kind != self._last:
            self._last = kind
            self._tl.note(f"progress: {message}")
        self._ctx.progress(fraction, message)

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def cpu_flags() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    flags = sorted({w for w in out.split() if w.startswith(("amx", "avx512"))})
    model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    return f"{model}; {os.cpu_count()} cpus; flags: {' '.join(flags) or 'no amx/avx512'}"


def _settings(home: Path, args):
    from agro_mcp.config import load_settings

    env = dict(os.environ)
    env.update({
        "AGRO_HOME": str(home),
        "AGRO_TRAINING_HISTORY_MAX_QUESTIONS": str(args.max_questions),
        "AGRO_TRAINING_MAX_LENGTH": str(args.max_length),
        "AGRO_RERANKER_TOPN": str(args.topn),
    })
    if args.no_history:
        env["AGRO_TRAINING_HISTORY_ENABLED"] = "0"
    for kv in args.env or []:
        k, _, v = kv.partition("=")
        env[k] = v
    return load_settings(env)


def load_queries(collection: Path, corpus: str):
    from training.evaluation.datasets import EvalQuery, GoldLoc

    gold: dict[str, list] = {}
    for line in (collection / "qrels.jsonl").read_text().splitlines():
        r = json.loads(line)
        gold.setdefault(r["qid"], []).append(GoldLoc(r["path"]))
    out = []
    for line in (collection / "queries.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["qid"] in gold:
            out.append(EvalQuery(r["qid"], r["query"], corpus, gold[r["qid"]], [], exact_paths=True))
    return out


def repo_shape(repo: Path, gen) -> dict:
    """Files, chunks and commits of what was bootstrapped."""
    commits = subprocess.run(["git", "-C", str(repo), "rev-list", "--count", "--no-merges", "HEAD"],
                             capture_output=True, text=True, check=False).stdout.strip()
    return {"files": len({c.path for c in gen.chunks}), "chunks": len(gen.chunks),
            "commits": int(commits) if commits.isdigit() else None}


def run_collection(name: str, base: Path, args, repo: Path | None = None) -> dict:
    """Index, bootstrap (timed by stage) and, for a history collection, score its later commits' messages.
    ``repo``: bootstrap this work tree instead of a collection's clone (timing only, nothing to score)."""
    from agro_mcp.engine import Engine
    from training.evaluation.report import format_table
    from training.evaluation.run import run_evaluation
    from training.releases.jobs import run_job
    from training.loop import run_bootstrap

    coll = BENCH / name
    home = base / name
    fig: dict = {"collection": name}
    if repo is None:
        repo = home / "repo"
        if not repo.is_dir():
            home.mkdir(parents=True, exist_ok=True)
            head = subprocess.run(["bash", str(BENCH / "tools" / "history_corpus.sh"), name, str(repo)],
                                  check=True, capture_output=True, text=True).stdout.strip()
            fig["split_commit"] = head
    eng = Engine(_settings(home, args))
    timeline = Timeline()
    logging.getLogger().addHandler(timeline)
    try:
        t0, c0 = time.time(), cpu_sec()
        eng.index(repo, name)
        fig["index_sec"] = round(time.time() - t0, 1)
        fig["index_cpu_sec"] = round(cpu_sec() - c0, 1)
        fig["repo"] = {"path": str(repo), **repo_shape(repo, eng.workspace.generation(name))}
        t0, c0 = time.time(), cpu_sec()
        run_id, res = run_job(eng.store, home, "bootstrap",
                              lambda ctx: run_bootstrap(eng.workspace, TimedCtx(ctx, timeline), name, promote=True))
        t1, c1 = time.time(), cpu_sec()
        fig["bootstrap_sec"] = round(t1 - t0, 1)
        fig["bootstrap_cpu_sec"] = round(c1 - c0, 1)
        fig["index_plus_bootstrap_sec"] = round(fig["index_sec"] + fig["bootstrap_sec"], 1)
        fig["stages_sec"] = timeline.stages(t0, t1, c0, c1)
        fig["load_after_bootstrap"] = [round(x, 2) for x in os.getloadavg()]
        gate = res.get("gate") or {}
        fig.update(run_id=run_id, decision=res.get("decision"), mined=res.get("mined"), history=res.get("history"),
                   trained_sec=res.get("trained_sec"), train_triplets=res.get("train_triplets"),
                   heldout_questions=(gate.get("figures") or {}).get("n_queries"), gate=gate.get("reasons"),
                   blend=(res.get("blend") or {}).get("alpha"), kind_choice=res.get("kind_choice"))
        logger.info("%s: bootstrap %s", name, {k: fig.get(k) for k in ("decision", "mined", "bootstrap_sec")})
        logger.info("%s: stage seconds %s", name, fig["stages_sec"])
        if res.get("table"):
            logger.info("gate table (held-out newest history commits):\n%s", res["table"])
        if not (coll / "queries.jsonl").is_file():
            return fig
        qs = load_queries(coll, name)
        cand = home / "models" / "runs" / (res.get("candidate_run") or run_id) / "model"
        t0 = time.time()
        report = run_evaluation(qs, eng.home, eng.settings.index, eng.settings.retrieval,
                                configs=("bm25", "dense", "fused"),
                                candidate_model=str(cand) if cand.is_dir() else None,
                                reranker_settings=eng.settings.reranker, embedder=eng.embedder(), k=50,
                                levels=("file",))
        fig["score_sec"] = round(time.time() - t0, 1)
        logger.info("%s queries (commits after the split)\n%s", name, format_table(report))
        rows = {c: {m: round(report.metrics[c]["file"][m], 4) for m in METRICS} for c in report.configs}
        served = "fused+candidate" if res.get("decision") == "promoted" else "fused"
        rows["served"] = dict(rows[served], config=served)
        fig["queries"] = len(qs)
        fig["file"] = rows
        fig["served_over_fused"] = round(rows["served"]["MRR@10"] / max(rows["fused"]["MRR@10"], 1e-9), 3)
        if "fused+candidate" in rows:
            fig["candidate_over_fused"] = round(
                rows["fused+candidate"]["MRR@10"] / max(rows["fused"]["MRR@10"], 1e-9), 3)
        fig["latency_ms"] = report.latency_ms
        for a in args.alphas or []:  # the same candidate served at a fixed blend weight (e.g. a conservative one)
            if not cand.is_dir():
                break
            rs = eng.settings.reranker.model_copy(update={"alpha": a})
            r = run_evaluation(qs, eng.home, eng.settings.index, eng.settings.retrieval, configs=("fused",),
                               candidate_model=str(cand), reranker_settings=rs, embedder=eng.embedder(), k=50,
                               levels=("file",))
            rows[f"candidate a={a}"] = {m: round(r.metrics["fused+candidate"]["file"][m], 4) for m in METRICS}
    finally:
        logging.getLogger().removeHandler(timeline)
        eng.close()
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--collection", action="append", help="history_<name> (repeatable; default history_httpx)")
    p.add_argument("--repo", action="append", type=Path,
                   help="bootstrap this git work tree (corpus named after its folder) and report times only")
    p.add_argument("--home", help="data home root (default: a new temp folder); a collection's clone is reused")
    p.add_argument("--max-questions", type=int, default=1000, help="AGRO_TRAINING_HISTORY_MAX_QUESTIONS")
    p.add_argument("--max-length", type=int, default=256, help="AGRO_TRAINING_MAX_LENGTH")
    p.add_argument("--topn", type=int, default=30, help="AGRO_RERANKER_TOPN")
    p.add_argument("--no-history", action="store_true",
                   help="bootstrap without the history miner (docstring pairs): what a synthetic-only run serves")
    p.add_argument("--alphas", type=float, nargs="*", help="also score the candidate at these fixed blend weights")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="extra AGRO_* setting for the data home")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    base = Path(args.home or tempfile.mkdtemp(prefix="agro-hist-"))
    figures = {"cpu": cpu_flags(), "load_before": os.getloadavg(), "args": vars(args), "collections": []}
    for name in args.collection or ([] if args.repo else ["history_httpx"]):
        figures["collections"].append(run_collection(name, base, args))
    for repo in args.repo or []:
        figures["collections"].append(run_collection(repo.resolve().name, base, args, repo=repo.resolve()))
    figures["load_after"] = os.getloadavg()
    lines = [f"CPU: {figures['cpu']}; load {figures['load_before'][0]:.1f} -> {figures['load_after'][0]:.1f}",
             f"{'collection':<16} {'config':<16} " + " ".join(f"{m:>7}" for m in METRICS)]
    for f in figures["collections"]:
        shape = f.get("repo") or {}
        lines.append(f"{f['collection']}: {shape.get('files')} files, {shape.get('chunks')} chunks, "
                     f"{shape.get('commits')} commits; index {f['index_sec']} s (cpu {f['index_cpu_sec']} s), "
                     f"bootstrap {f['bootstrap_sec']} s (cpu {f['bootstrap_cpu_sec']} s); index + bootstrap "
                     f"{f['index_plus_bootstrap_sec']} s; stages wall/cpu s: "
                     + ", ".join(f"{k} {v['wall']}/{v['cpu']}" for k, v in f["stages_sec"].items()))
        if "file" not in f:
            lines.append(f"{f['collection']}: decision {f['decision']}; mined {f['mined']}; "
                         f"held-out {f.get('heldout_questions')}")
            continue
        for c, row in f["file"].items():
            lines.append(f"{f['collection']:<16} {c:<16} " + " ".join(f"{row[m]:>7.3f}" for m in METRICS))
        lines.append(f"{f['collection']}: served/fused {f['served_over_fused']}x ({f['file']['served']['config']}); "
                     f"decision {f['decision']}; mined {f['mined']}; held-out {f.get('heldout_questions')}; "
                     f"index {f['index_sec']} s, bootstrap {f['bootstrap_sec']} s (training {f['trained_sec']} s), "
                     f"scoring {f['score_sec']} s")
    text = "\n".join(lines)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1, default=str))
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
