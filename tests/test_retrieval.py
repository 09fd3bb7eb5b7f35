"""Retrieval: every index backend against exact search, ids / removal / persistence, argument
errors, and the retrieval memory's reservoirs, exclusions, staleness guard and resume."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from avalanche_fscl.retrieval import (
    INDEX_BACKENDS,
    ExactIndex,
    FaissIVFIndex,
    RetrievalMemory,
    StaleMemoryError,
    VectorIndex,
    create_index,
)

# small settings so IVF trains (nlist=16 -> trains at 39*16 = 624 vectors) and HNSW is quick
ARGS = {"exact": {}, "flat": {}, "ivf": {"nlist": 16, "nprobe": 16}, "hnsw": {"M": 16}}


def clustered(n: int, dim: int, n_clusters: int = 50, seed: int = 0) -> np.ndarray:
    """``n`` points of one fixed Gaussian mixture (the centres do not depend on ``seed``)."""
    centres = np.random.default_rng(12345).standard_normal((n_clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    return centres[rng.integers(0, n_clusters, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist()))
    return hits / truth.numel()


# ----------------------------------------------------------------------------- indexes

@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_flat_matches_exact(metric):
    x, q = torch.randn(600, 16), torch.randn(20, 16)
    ref, flat = create_index("exact", 16, metric), create_index("flat", 16, metric)
    ref.add(x)
    flat.add(x)
    s_ref, i_ref = ref.search(q, 10)
    s, i = flat.search(q, 10)
    assert torch.equal(i, i_ref)
    assert torch.allclose(s, s_ref, atol=1e-5)
    assert s.dtype == torch.float32 and i.dtype == torch.int64 and s.shape == (20, 10)
    assert bool((s[:, :-1] >= s[:, 1:]).all()), "best first"


def test_exact_chunking_matches_one_block():
    x, q = torch.randn(1000, 8), torch.randn(50, 8)
    whole, chunked = ExactIndex(8), ExactIndex(8, batch_size=7, block_size=64)
    whole.add(x)
    chunked.add(x)
    assert torch.equal(whole.search(q, 12)[1], chunked.search(q, 12)[1])
    assert torch.equal(whole.search(q, 150)[1], chunked.search(q, 150)[1]), "k larger than a block"


@pytest.mark.parametrize("backend", ["ivf", "hnsw"])
def test_approximate_recall(backend):
    x = clustered(5000, 32)
    q = torch.from_numpy(clustered(200, 32, seed=1))
    ref = create_index("exact", 32)
    ref.add(x)
    index = create_index(backend, 32, **({"nlist": 64} if backend == "ivf" else {}))
    index.add(x)
    if backend == "ivf":
        assert index.is_trained and index.nlist == 64
    assert recall(index.search(q, 10)[1], ref.search(q, 10)[1]) >= 0.9


def test_ivf_default_rule_stages_then_trains():
    index = create_index("ivf", 8, train_size=2000)
    x = np.random.default_rng(0).standard_normal((1500, 8))
    index.add(x)
    assert not index.is_trained  # below train_size: exact staging search
    exact = create_index("exact", 8)
    exact.add(x)
    assert torch.equal(index.search(x[:20], 5)[1], exact.search(x[:20], 5)[1])
    index = VectorIndex.from_state_dict(index.state_dict())  # the staging survives a round trip
    index.add(np.random.default_rng(1).standard_normal((500, 8)))
    assert index.is_trained and index.nlist == min(round(4 * math.sqrt(2000)), 2000 // 39) and len(index) == 2000
    with pytest.raises(ValueError, match="already trained"):
        index.train()


@pytest.mark.parametrize("backend", INDEX_BACKENDS)
def test_cosine_vs_ip(backend):
    x = torch.tensor([[1.0, 0.0], [10.0, 10.0]])
    q = torch.tensor([[1.0, 0.0]])
    cos, ip = create_index(backend, 2, "cosine"), create_index(backend, 2, "ip")
    cos.add(x)
    ip.add(x)
    s, i = cos.search(q, 2)
    assert i.tolist() == [[0, 1]] and torch.allclose(s, torch.tensor([[1.0, math.sqrt(0.5)]]))
    s, i = ip.search(q, 2)
    assert i.tolist() == [[1, 0]] and torch.allclose(s, torch.tensor([[10.0, 1.0]]))


@pytest.mark.parametrize("backend", INDEX_BACKENDS)
def test_ids_and_remove(backend):
    x = torch.from_numpy(clustered(800, 16))
    index = create_index(backend, 16, **ARGS[backend])
    assert index.add(x[:700]).tolist() == list(range(700))
    assert index.add(x[700:], ids=torch.arange(1000, 1100)).tolist() == list(range(1000, 1100))
    assert index.add(x[:2]).tolist() == [1100, 1101], "default ids continue past explicit ones"
    with pytest.raises(ValueError, match="ids already in the index"):
        index.add(x[:1], ids=[5])
    removed = list(range(0, 700, 2)) + [1000]
    assert index.remove(removed + [99999]) == len(removed)
    assert len(index) == 802 - len(removed)
    _, ids = index.search(x[:50], 20)
    assert not set(ids.flatten().tolist()) & set(removed)
    assert (ids >= 0).all()
    # removing more than half: HNSW rebuilds its graph, every backend keeps answering
    assert index.remove(range(1, 700, 2)) == 350
    _, ids = index.search(x[:50], 10)
    assert set(ids.flatten().tolist()) <= set(range(1001, 1102))
    if backend == "hnsw":
        assert index.n_tombstones == 0
    index.reset()
    assert len(index) == 0 and index.search(x[:2], 3)[1].eq(-1).all()


@pytest.mark.parametrize("backend", INDEX_BACKENDS)
def test_save_load_round_trip(backend, tmp_path):
    x = torch.from_numpy(clustered(900, 16))
    index = create_index(backend, 16, **ARGS[backend])
    index.add(x)
    index.remove([3, 4, 5])
    path = tmp_path / f"{backend}.npz"
    index.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], "no temp file left behind"
    with np.load(path, allow_pickle=False) as data:
        assert "header" in data.files
    loaded = VectorIndex.load(path)
    assert type(loaded) is type(index) and len(loaded) == len(index) and loaded.backend == backend
    for a, b in zip(index.search(x[:30], 10), loaded.search(x[:30], 10)):
        assert torch.equal(a, b)
    assert loaded.add(x[:1]).tolist() == [900], "id counter restored"


@pytest.mark.parametrize("backend", INDEX_BACKENDS)
def test_k_larger_than_len_pads(backend):
    index = create_index(backend, 4)
    index.add(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float64))
    scores, ids = index.search(np.ones((3, 4), np.float32), 8)
    assert scores.device.type == "cpu" and scores.dtype == torch.float32 and ids.dtype == torch.int64
    assert (ids[:, 5:] == -1).all() and torch.isinf(scores[:, 5:]).all() and (scores[:, 5:] < 0).all()
    assert sorted(ids[0, :5].tolist()) == [0, 1, 2, 3, 4]


def test_bad_arguments():
    index = create_index("exact", 64)
    index.add(torch.randn(3, 64))
    with pytest.raises(ValueError, match=r"k must be an integer >= 1, got 0"):
        index.search(torch.randn(1, 64), 0)
    with pytest.raises(ValueError, match=r"dimension mismatch: index has dim=64, vectors have 32"):
        index.add(torch.randn(2, 32))
    with pytest.raises(ValueError, match=r"dimension mismatch: index has dim=64, queries have 32"):
        index.search(torch.randn(2, 32), 1)
    with pytest.raises(TypeError, match=r"vectors must be a floating-point tensor"):
        index.add(torch.ones(2, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"unknown backend 'foo': allowed 'exact', 'flat', 'ivf', 'hnsw'"):
        create_index("foo", 8)
    with pytest.raises(ValueError, match=r"unknown metric 'l2': allowed 'cosine', 'ip'"):
        create_index("flat", 8, metric="l2")
    with pytest.raises(TypeError, match=r"unknown argument 'nprobe' for backend 'hnsw'"):
        create_index("hnsw", 8, nprobe=4)
    with pytest.raises(ValueError, match=r"dim must be an integer >= 1, got 0"):
        create_index("exact", 0)
    with pytest.raises(ValueError, match=r"IVF training needs at least nlist=32"):
        FaissIVFIndex(8, nlist=32).train(np.zeros((10, 8), np.float32))
    memory = RetrievalMemory(8)
    with pytest.raises(ValueError, match=r"retrieval memory is empty: add stream examples or an external corpus"):
        memory.search(torch.randn(1, 8), 1)
    with pytest.raises(ValueError, match=r"dimension mismatch: memory has dim=8, embeddings have 4"):
        memory.add(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"source must be one of 'stream', 'external', got 'web'"):
        memory.add(torch.randn(2, 8), torch.zeros(2, dtype=torch.long), source="web")
    with pytest.raises(ValueError, match=r"labels are required for stream entries"):
        memory.add(torch.randn(2, 8))
    memory.add(torch.randn(2, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"k must be an integer >= 1, got -1"):
        memory.search(torch.randn(1, 8), -1)
    with pytest.raises(ValueError, match=r"unknown backend 'annoy'"):
        RetrievalMemory(8, backend="annoy")


@pytest.mark.cuda
def test_exact_index_on_cuda():
    x, q = torch.randn(3000, 32), torch.randn(64, 32)
    cpu, gpu = ExactIndex(32), ExactIndex(32, device="cuda")
    cpu.add(x)
    gpu.add(x.cuda())
    s, i = gpu.search(q.cuda(), 10)
    assert s.device.type == "cuda" and i.device.type == "cuda"
    assert recall(i.cpu(), cpu.search(q, 10)[1]) > 0.99
    gpu.remove(torch.arange(0, 3000, 2))
    assert (gpu.search(q.cuda(), 10)[1] % 2 == 1).all()


# ----------------------------------------------------------------------------- memory

def test_per_class_cap_reservoir():
    memory = RetrievalMemory(4, per_class_cap=20, seed=3)
    n = 400
    labels = torch.arange(3).repeat_interleave(n)  # three classes, 400 examples each
    payload = torch.arange(3 * n)
    for start in range(0, 3 * n, 100):  # arrive in batches
        memory.add(torch.randn(100, 4), labels[start : start + 100], payload_ids=payload[start : start + 100])
    assert memory.counts_per_class() == {0: 20, 1: 20, 2: 20} and len(memory) == 60
    assert memory.labels_present().tolist() == [0, 1, 2]
    kept = memory.state_dict()["payload_ids"]
    position = kept % n  # rank of each kept example within its class
    assert (position < n // 2).any() and (position >= n // 2).any(), "early and late examples kept"
    assert 100 < position.float().mean() < 300, "roughly uniform over the class's history"


def test_max_size_reservoir_and_external():
    memory = RetrievalMemory(4, max_size=100, seed=0)
    kept = memory.add(torch.randn(1000, 4), torch.arange(1000) % 7, payload_ids=torch.arange(1000))
    assert len(memory) == 100 and kept.shape == (100,)
    pay = memory.state_dict()["payload_ids"]
    assert (pay < 500).any() and (pay >= 500).any()
    memory.add_external(torch.randn(30, 4), payload_ids=torch.arange(5000, 5030))
    assert len(memory) == 100 and memory.n_external == 30 and memory.n_stream == 70
    memory.add(torch.randn(200, 4), torch.zeros(200, dtype=torch.long))
    assert memory.n_external == 30 and len(memory) == 100, "external entries are never evicted"
    nb = memory.search(torch.randn(5, 4), 100, source="external")
    assert nb.mask.sum(1).eq(30).all() and (nb.sources[nb.mask] == 1).all()
    assert ((nb.payload_ids[nb.mask] >= 5000)).all() and (nb.labels[nb.mask] == -1).all()
    with pytest.raises(ValueError, match=r"external entries alone \(101\) would exceed max_size=100"):
        memory.add_external(torch.randn(71, 4))


def test_exclude_payload_and_ids():
    torch.manual_seed(0)
    emb = torch.randn(60, 16)
    memory = RetrievalMemory(16, backend="flat")
    memory.add(emb[:50], torch.arange(50) % 5, payload_ids=torch.arange(50))
    memory.add(emb[:10] * 1.01, torch.arange(10) % 5, payload_ids=torch.arange(10))  # same payloads again
    q = emb[:10]
    nb = memory.search(q, 5, exclude_payload=torch.arange(10))
    assert nb.mask.all() and nb.embeddings.shape == (10, 5, 16)
    assert not (nb.payload_ids == torch.arange(10)[:, None]).any(), "the query itself never comes back"
    plain = memory.search(q, 1)
    assert torch.equal(plain.payload_ids[:, 0], torch.arange(10))
    nb = memory.search(q, 59, exclude_ids=plain.ids)
    assert nb.mask.all() and not (nb.ids == plain.ids).any()
    nb = memory.search(q, 60, exclude_payload=torch.arange(10))
    assert nb.mask.sum(1).eq(58).all(), "all but the 2 entries carrying the query's payload"
    assert torch.isinf(nb.scores[~nb.mask]).all() and (nb.labels[~nb.mask] == -1).all()
    assert torch.equal(nb.embeddings[0, 0], memory.search(q[:1], 1, exclude_payload=[0]).embeddings[0, 0])


def test_stale_encoder_and_reembed():
    memory = RetrievalMemory(8, backend="hnsw")
    memory.add(torch.randn(20, 8), torch.arange(20) % 4, payload_ids=torch.arange(20), encoder_tag="a")
    assert memory.encoder_tag == "a"
    memory.search(torch.randn(2, 8), 3, encoder_tag="a")
    with pytest.raises(StaleMemoryError, match=r"encoder_tag='a', this call uses 'b'.*memory.reembed"):
        memory.search(torch.randn(2, 8), 3, encoder_tag="b")
    with pytest.raises(StaleMemoryError, match="clear"):
        memory.add(torch.randn(2, 8), torch.zeros(2, dtype=torch.long), encoder_tag="b")
    table = torch.randn(20, 8)  # the "new encoder": payload id -> embedding
    memory.reembed(lambda pay: table[pay], "b")
    nb = memory.search(table[:4], 1, encoder_tag="b")
    assert memory.encoder_tag == "b" and nb.payload_ids[:, 0].tolist() == [0, 1, 2, 3]
    assert torch.allclose(nb.embeddings[:, 0], table[:4])
    memory.add_external(torch.randn(3, 8))
    with pytest.raises(ValueError, match="3 entries have no payload id"):
        memory.reembed(lambda pay: table[pay], "c")


@pytest.mark.parametrize("backend", ["exact", "ivf", "hnsw"])
def test_state_dict_resume_is_identical(backend):
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(300, 8, generator=g), torch.randint(0, 6, (300,), generator=g)) for _ in range(6)]
    external = torch.randn(20, 8, generator=g)
    args = dict(dim=8, backend=backend, per_class_cap=60, max_size=250, seed=5,
                index_args={"nlist": 8} if backend == "ivf" else None)

    def feed(memory, steps):
        for j in steps:
            memory.add(batches[j][0], batches[j][1], payload_ids=torch.arange(300) + 300 * j)
            if j == 2:  # an external corpus arrives mid-stream and evicts stream entries
                memory.add_external(external, payload_ids=torch.arange(20) + 10_000)

    straight = RetrievalMemory(**args)
    feed(straight, range(6))
    first = RetrievalMemory(**args)
    feed(first, range(3))
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = RetrievalMemory(8, backend=backend)  # limits and seed come from the state
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    feed(resumed, range(3, 6))

    a, b = straight.state_dict(), resumed.state_dict()
    for key in ("embeddings", "labels", "payload_ids", "entry_ids", "sources", "stream_rows", "rng_state"):
        assert torch.equal(a[key], b[key]), key
    assert a["seen_class"] == b["seen_class"] and a["seen_stream"] == b["seen_stream"] == 1800
    assert len(resumed) == 250 and resumed.n_external == 20
    assert max(resumed.counts_per_class().values()) <= 60
    q = torch.randn(16, 8, generator=g)
    na, nb = straight.search(q, 10), resumed.search(q, 10)
    assert torch.equal(na.ids, nb.ids) and torch.allclose(na.scores, nb.scores)


def test_memory_bytes():
    memory = RetrievalMemory(16)
    memory.add(torch.randn(10, 16), torch.zeros(10, dtype=torch.long))
    # exact index: vector (4·dim) + device id (8) + host id (8) per entry
    assert memory.bytes_per_entry == 4 * 16 + 25 + 4 * 16 + 16
    assert memory.nbytes >= len(memory) * memory.bytes_per_entry
