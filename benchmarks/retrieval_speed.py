"""Retrieval speed: build time, queries per second, recall@10 and memory of every index backend.

    python -m avalanche_fscl.benchmarks.retrieval_speed --sizes 10000 100000 1000000 --dim 512 \\
        --queries 256 --out benchmarks/results/retrieval_speed

For each size N the database is N points of a fixed hierarchical Gaussian mixture
(``--clusters`` unit centres grouped under 32 super-centres; per-point noise with a power-law
spectrum, so neighbourhoods have a low intrinsic dimension like real embeddings; see
:func:`clustered_data`); queries are fresh draws from the same mixture. Each backend
is built (timed: ``add``, IVF training included), then searched with ``--repeats`` batches of
``--queries`` queries (QPS = median over batches, after one warm-up batch); recall@10 is
measured against the exact (torch) backend over all those queries. Writes ``results.json`` and
``results.md`` into ``--out`` (atomically), with the verdict: which approximate configuration at
the largest size reaches recall@10 >= 0.95 at >= 10x the exact backend's throughput.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np
import torch

from ..retrieval import VectorIndex, create_index
from .io import write_json, write_text
from .machine import cpu_model, device_problem

__all__ = ["clustered_data", "run_retrieval_speed", "main"]

K = 10
TARGET_RECALL, TARGET_SPEEDUP = 0.95, 10.0


def clustered_data(n: int, dim: int, n_clusters: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """(n, dim) float32 points of a hierarchical Gaussian mixture whose centres depend only on
    ``dim`` and ``n_clusters`` (generator seed 0), so databases and queries (other ``seed``)
    share them.

    32 unit super-centres; each of the ``n_clusters`` unit centres has cosine 0.7 to its
    super-centre (clusters of clusters, as in real embeddings: without this, all clusters
    are equidistant in high dimension and neighbours beyond a point's own cluster are
    near-ties). Noise coordinate j has standard deviation proportional to (j + 1) ** -0.75
    (a power-law spectrum: low intrinsic dimension), scaled to an expected norm of 0.75.
    Generated in chunks to bound temporary memory.
    """
    gen = np.random.default_rng(0)

    def unit(m: int) -> np.ndarray:
        v = gen.standard_normal((m, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    supers, offsets = unit(32), unit(n_clusters)
    centres = 0.7 * supers[gen.integers(0, 32, n_clusters)] + np.sqrt(1 - 0.7**2) * offsets
    sigma = np.arange(1, dim + 1, dtype=np.float32) ** -0.75
    sigma *= 0.75 / np.sqrt((sigma**2).sum())
    rng = np.random.default_rng(seed + 1)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        out[s : s + m] = centres[rng.integers(0, n_clusters, m)]
        out[s : s + m] += rng.standard_normal((m, dim), dtype=np.float32) * sigma
    return out


def _configs(nprobes: list[int], efs: list[int], device: str = "cpu") -> list[tuple[str, dict[str, Any], str, list[dict[str, Any]]]]:
    """(backend, build args, search attribute, search settings) for each backend."""
    return [
        ("exact", {"batch_size": 1024, "device": device}, "", [{}]),
        ("flat", {}, "", [{}]),
        ("ivf", {}, "nprobe", [{"nprobe": p} for p in nprobes]),
        ("hnsw", {}, "ef_search", [{"ef_search": e} for e in efs]),
    ]


def _batches(q: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for s in range(0, q.shape[0], size):
        yield q[s : s + size]


def _measure(index: VectorIndex, queries: np.ndarray, batch: int) -> tuple[float, list[float], torch.Tensor]:
    """Median QPS over the query batches (after one warm-up batch), per-batch seconds, ids."""
    index.search(queries[:batch], K)
    seconds, ids = [], []
    for qb in _batches(queries, batch):
        t0 = time.perf_counter()
        ids.append(index.search(qb, K)[1])
        seconds.append(time.perf_counter() - t0)
    return batch / statistics.median(seconds), seconds, torch.cat(ids)


def _recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    hit = (found.unsqueeze(2) == truth.unsqueeze(1)) & (truth.unsqueeze(1) >= 0)
    return float(hit.any(1).sum()) / float((truth >= 0).sum())


def _describe(index: VectorIndex, search: dict[str, Any]) -> str:
    if index.backend == "ivf":
        if not index.is_trained:
            return f"untrained: exact staging below train_size={index.train_threshold}"
        return f"nlist={index.nlist}, nprobe={search['nprobe']}"
    if index.backend == "hnsw":
        return f"M={index.M}, ef_construction={index.ef_construction}, ef_search={search['ef_search']}"
    return ""


def run_retrieval_speed(sizes: list[int], dim: int, n_queries: int, repeats: int, clusters: int, seed: int,
                        nprobes: list[int], efs: list[int], backends: list[str],
                        log: Any = print, device: str = "cpu") -> list[dict[str, Any]]:
    """One row per (size, backend, search setting); see the module docstring. ``device`` is the
    exact backend's (the FAISS backends run on the CPU); queries come from and results go to
    the host, so a CUDA row's time includes both transfers."""
    rows: list[dict[str, Any]] = []
    queries = clustered_data(n_queries * repeats, dim, clusters, seed + 1_000_003)
    for n in sizes:
        data = clustered_data(n, dim, clusters, seed)
        truth = exact_qps = None
        for backend, build_args, attr, searches in _configs(nprobes, efs, device):
            if backend not in backends and backend != "exact":
                continue
            gc.collect()
            t0 = time.perf_counter()
            index = create_index(backend, dim, "cosine", **build_args)
            index.add(data)
            build_s = time.perf_counter() - t0
            for search in searches:
                for key, value in search.items():
                    setattr(index, key, value)
                qps, seconds, ids = _measure(index, queries, n_queries)
                if backend == "exact":
                    truth, exact_qps = ids, qps
                row = {
                    "size": n, "backend": backend, "params": _describe(index, search), "build_s": build_s,
                    "qps": qps, "qps_best": n_queries / min(seconds), "batch_seconds": seconds, "speedup_vs_exact": qps / exact_qps,
                    "recall_at_10": _recall(ids, truth), "bytes_per_vector": index.nbytes / len(index),
                    "approximate": backend in ("ivf", "hnsw"),
                }
                if backend == "exact" and "exact" not in backends:
                    continue  # still the reference, not reported
                rows.append(row)
                log(f"N={n:>8} {backend:>5} {row['params']:<44} build {build_s:8.2f}s  "
                    f"{qps:10.1f} q/s  x{row['speedup_vs_exact']:6.1f}  recall@10 {row['recall_at_10']:.4f}  "
                    f"{row['bytes_per_vector']:.0f} B/vec")
            del index
        del data
    return rows


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Approximate configurations at the largest size with recall@10 >= 0.95 at >= 10x exact."""
    largest = max(r["size"] for r in rows)
    ok = [r for r in rows if r["size"] == largest and r["approximate"]
          and r["recall_at_10"] >= TARGET_RECALL and r["speedup_vs_exact"] >= TARGET_SPEEDUP]
    ok.sort(key=lambda r: -r["qps"])
    if ok:
        best = ok[0]
        text = (f"At N={largest}: {len(ok)} approximate configuration(s) reach recall@10 >= {TARGET_RECALL} at "
                f">= {TARGET_SPEEDUP:g}x the exact backend's throughput; the fastest is {best['backend']} "
                f"({best['params']}): recall@10 {best['recall_at_10']:.3f}, {best['speedup_vs_exact']:.1f}x.")
    else:
        text = (f"At N={largest}: no approximate configuration reaches recall@10 >= {TARGET_RECALL} at "
                f">= {TARGET_SPEEDUP:g}x the exact backend's throughput.")
    return {"size": largest, "recall_target": TARGET_RECALL, "speedup_target": TARGET_SPEEDUP,
            "meeting": [{k: r[k] for k in ("backend", "params", "recall_at_10", "speedup_vs_exact", "qps")} for r in ok],
            "text": text}


def _machine(threads: int, device: str = "cpu") -> dict[str, Any]:
    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None
    return {"cpu_model": cpu, "cores": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "faiss": faiss.__version__,
            "numpy": np.__version__, "exact_device": device, "gpu": gpu}


def _markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Retrieval speed",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['threads']} threads (torch and FAISS); "
        f"Python {m['python']}, torch {m['torch']}, faiss {m['faiss']}, numpy {m['numpy']}. "
        + (f"Exact backend on {m['gpu']} ({m['exact_device']}). " if m.get("gpu") else "")
        + f"Wall time {result['wall_s']:.0f} s.",
        "",
        f"Data: dim={result['args']['dim']}, {result['args']['clusters']} Gaussian clusters under 32 "
        "super-clusters (unit centres, cosine 0.7 to their super-centre; power-law noise spectrum, noise "
        "norm 0.75), cosine metric, fixed seed; queries: "
        f"{result['args']['repeats']} batches of {result['args']['queries']} fresh points from the same mixture. "
        "QPS is the median over batches (the JSON also has the best batch and every batch's time); recall@10 is against the exact (torch) backend; bytes/vector is "
        "`index.nbytes / N` (vectors plus index structures).",
        "",
        "| N | backend | parameters | build (s) | QPS | vs exact | recall@10 | bytes/vector |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['size']:,} | {r['backend']} | {r['params'] or '-'} | {r['build_s']:.2f} | "
                     f"{r['qps']:,.0f} | {r['speedup_vs_exact']:.1f}x | {r['recall_at_10']:.4f} | "
                     f"{r['bytes_per_vector']:,.0f} |")
    lines += ["", f"**Verdict.** {result['verdict']['text']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=256, help="queries per batch")
    p.add_argument("--repeats", type=int, default=10, help="timed query batches per configuration")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 64], help="IVF nprobe values")
    p.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128], help="HNSW ef_search values")
    p.add_argument("--backends", nargs="+", default=["exact", "flat", "ivf", "hnsw"],
                   choices=["exact", "flat", "ivf", "hnsw"])
    p.add_argument("--threads", type=int, default=2, help="torch and FAISS (OpenMP) threads")
    p.add_argument("--device", default="cpu", help="the exact backend's device: cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/retrieval_speed"))
    args = p.parse_args(argv)
    for name in ("dim", "queries", "repeats", "clusters", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    why = device_problem(args.device)
    if why:
        p.error(f"--device {why}")
    if min(args.sizes) < K:
        p.error(f"--sizes must be >= {K}, got {min(args.sizes)}")

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.perf_counter()
    rows = run_retrieval_speed(sorted(args.sizes), args.dim, args.queries, args.repeats, args.clusters, args.seed,
                               args.nprobe, args.ef_search, args.backends, device=args.device)
    result = {
        "command": "python -m avalanche_fscl.benchmarks.retrieval_speed " + shlex.join(argv),
        "machine": _machine(args.threads, args.device),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "wall_s": time.perf_counter() - t0,
        "rows": rows,
        "verdict": verdict(rows),
    }
    write_json(args.out / "results.json", result)
    write_text(args.out / "results.md", _markdown(result))
    print(result["verdict"]["text"])
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
