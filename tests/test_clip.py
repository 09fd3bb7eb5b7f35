"""open_clip loading, prompt learners, the gradient regulator, GRAM meta-training and plugin,
CLIP pretraining (exact resume) and the CLIP strategies (tiny configs, random weights)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avalanche_fscl.models.clip import (
    clip_image_transform,
    encode_class_names,
    kept_clip_checkpoints,
    list_clip_models,
    load_clip,
    project_clip_models,
    save_clip_checkpoint,
)
from avalanche_fscl.models.gram import GRAMMetaConfig, GRAMTaskSampler, load_gram_checkpoint, meta_train_gram, prompt_flags
from avalanche_fscl.models.prompts import PromptedCLIP
from avalanche_fscl.models.regulator import GradientRegulator
from avalanche_fscl.streams.captions import CaptionCorpus

from conftest import require_dataset

TEST_MODEL = "fscl-vit-test"


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model, _, tok = load_clip(TEST_MODEL)
    return model, tok


def _toy_corpus(n_concepts: int = 6, per: int = 24, size: int = 32) -> CaptionCorpus:
    """Concepts = coloured squares at two brightness levels (two visual domains)."""
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(n_concepts, 3, generator=g)
    images, concept = [], []
    for c in range(n_concepts):
        for i in range(per):
            level = 0.4 if i % 2 else 1.0
            img = (colours[c].view(3, 1, 1) * level + 0.05 * torch.randn(3, size, size, generator=g)).clamp(0, 1)
            images.append((img * 255).to(torch.uint8))
            concept.append(c)
    names = ["red thing", "green thing", "blue thing", "dark stone", "bright sky", "old wood"][:n_concepts]
    return CaptionCorpus(torch.stack(images), torch.tensor(concept), [[f"a photo of a {n}.", f"a {n}."] for n in names],
                         names, ["toy"] * n_concepts)


# ------------------------------------------------------------------------------ load_clip


def test_project_configs_registered_and_listed():
    assert {"fscl-vit-p8-64", "fscl-rn-64", "fscl-rn-64-w32", TEST_MODEL} <= set(project_clip_models())
    assert {"ViT-B-32", "ViT-B-16", "fscl-vit-p8-64"} <= set(list_clip_models())
    wide, _, _ = load_clip("fscl-rn-64-w32")  # recipe rn_64_w32: fscl-rn-64 with a 1.6x wider image tower
    assert type(wide.visual).__name__ == "ModifiedResNet"
    assert sum(p.numel() for p in wide.visual.parameters()) == 6_915_632


def test_load_clip_shapes_tokenizer_and_transform(clip):
    model, tok = clip
    assert not model.training
    t = tok(["a photo of a cat.", "dog"])
    assert t.shape == (2, model.context_length) == (2, 16) and t.dtype == torch.long
    tf = clip_image_transform(model)
    x = tf(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8))  # grey, small -> RGB at 32 px
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    w = encode_class_names(model, tok, ["cat", "dog", "car"], ["a photo of a {c}.", "a {c}."])
    assert w.shape == (3, 32) and torch.allclose(w.norm(dim=1), torch.ones(3), atol=1e-5)


def test_load_clip_channels_last_for_convolutional_towers_only(clip):
    """Default: a convolutional image tower runs in channels-last layout (faster on CPU), a ViT
    keeps the default layout; either way the embeddings are the same up to rounding."""
    vit, _ = clip
    assert vit.visual.conv1.weight.is_contiguous()
    torch.manual_seed(0)
    rn, _, _ = load_clip("fscl-rn-64")
    torch.manual_seed(0)
    plain, _, _ = load_clip("fscl-rn-64", channels_last=False)
    w = "visual.layer1.0.conv2.weight"
    assert rn.state_dict()[w].is_contiguous(memory_format=torch.channels_last) and not rn.state_dict()[w].is_contiguous()
    assert plain.state_dict()[w].is_contiguous()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        a, b = rn.encode_image(x), plain.encode_image(x)
    assert a.shape == (4, 256) and torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    forced, _, _ = load_clip(TEST_MODEL, channels_last=True)
    assert forced.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_load_clip_bad_arguments(tmp_path, clip):
    with pytest.raises(ValueError, match=r"unknown model_name='ViT-Nope'.*allowed:.*ViT-B-32"):
        load_clip("ViT-Nope")
    with pytest.raises(ValueError, match=r"precision='fp8'"):
        load_clip(TEST_MODEL, precision="fp8")
    with pytest.raises(ValueError, match=r"neither a file nor a tag"):
        load_clip(TEST_MODEL, pretrained="laion400m_e32")
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        load_clip(TEST_MODEL, pretrained=str(tmp_path / "missing.pt"))
    # a checkpoint of another architecture: named in the file, or not fitting
    model, _ = clip
    path = tmp_path / "test.pt"
    save_clip_checkpoint(path, model, TEST_MODEL)
    with pytest.raises(ValueError, match=r"checkpoint of architecture 'fscl-vit-test', not model_name='fscl-vit-p8-64'"):
        load_clip("fscl-vit-p8-64", pretrained=path)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match=r"does not fit architecture 'fscl-vit-p8-64'"):
        load_clip("fscl-vit-p8-64", pretrained=tmp_path / "plain.pt")


def test_kept_checkpoint_variants_resolve_by_tag(tmp_path, monkeypatch, clip):
    """``pretrained="fscl:<variant>"`` loads ``<model>.<variant>.pt`` from the kept folder, is listed
    by ``kept_clip_checkpoints`` (a longer model name is not taken for a variant of a shorter one),
    and a missing or malformed variant names the argument and the kept ones."""
    from avalanche_fscl.models import clip as clip_module
    from avalanche_fscl.models.clip import kept_clip_path

    model = copy.deepcopy(clip[0])  # the fixture is shared: leave it unchanged
    monkeypatch.setattr(clip_module, "KEPT_CLIP_DIR", tmp_path)
    with torch.no_grad():
        model.logit_scale.fill_(1.25)
    save_clip_checkpoint(tmp_path / f"{TEST_MODEL}.tiny.pt", model, TEST_MODEL)
    (tmp_path / "fscl-rn-64-w32.pt").write_bytes(b"")  # a kept file of another architecture
    assert kept_clip_checkpoints() == {"fscl-rn-64-w32 fscl": tmp_path / "fscl-rn-64-w32.pt",
                                       f"{TEST_MODEL} fscl:tiny": tmp_path / f"{TEST_MODEL}.tiny.pt"}
    assert list(kept_clip_checkpoints("fscl-rn-64")) == []
    assert kept_clip_path(TEST_MODEL, "laion400m_e32") is None
    again, _, _ = load_clip(TEST_MODEL, pretrained="fscl:tiny")
    assert again.logit_scale.item() == 1.25
    with pytest.raises(FileNotFoundError, match=r"pretrained='fscl:nope'.*kept: fscl-rn-64-w32 fscl, fscl-vit-test fscl:tiny"):
        load_clip(TEST_MODEL, pretrained="fscl:nope")
    with pytest.raises(FileNotFoundError, match=r"pretrained='fscl': no kept checkpoint of 'fscl-vit-test'"):
        load_clip(TEST_MODEL, pretrained="fscl")
    with pytest.raises(ValueError, match=r"pretrained='fscl:../x': a variant is letters"):
        load_clip(TEST_MODEL, pretrained="fscl:../x")


def test_checkpoint_round_trip_in_half(tmp_path, clip):
    model, tok = clip
    path = tmp_path / "half.pt"
    save_clip_checkpoint(path, model, TEST_MODEL, storage="fp16")
    again, _, _ = load_clip(TEST_MODEL, pretrained=path)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert a.dtype == b.dtype, k
        assert torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-3), k


def test_checkpoint_in_int8_is_smaller_and_within_half_a_step_per_row(tmp_path, clip):
    """``storage="int8"``: each quantized weight is off by at most half its row's step
    (max |w| / 254), the file is well under the fp16 one, the embeddings barely move, a plain
    ``load_state_dict`` refuses the file (missing keys) and a bad value names the argument."""
    model, tok = clip
    save_clip_checkpoint(tmp_path / "half.pt", model, TEST_MODEL, storage="fp16")
    save_clip_checkpoint(tmp_path / "int8.pt", model, TEST_MODEL, storage="int8", steps=7)
    assert (tmp_path / "int8.pt").stat().st_size < 0.62 * (tmp_path / "half.pt").stat().st_size
    ckpt = torch.load(tmp_path / "int8.pt", weights_only=True)
    assert ckpt["steps"] == 7 and "token_embedding.weight" in ckpt["int8_weights"]
    assert ckpt["int8_weights"]["token_embedding.weight"].dtype == torch.int8
    again, _, _ = load_clip(TEST_MODEL, pretrained=tmp_path / "int8.pt")
    quantized = set(ckpt["int8_weights"])
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert a.dtype == b.dtype, k
        if k in quantized:
            step = a.reshape(a.shape[0], -1).abs().amax(dim=1) / 127
            err = (a - b).reshape(a.shape[0], -1).abs().amax(dim=1)
            assert torch.all(err <= step / 2 + 1e-7), k
        else:
            assert torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-3), k
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    text = tok(["a photo of a cat", "a dog"])
    with torch.no_grad():
        for f in ("encode_image", "encode_text"):
            inp = x if f == "encode_image" else text
            cos = torch.nn.functional.cosine_similarity(getattr(model, f)(inp), getattr(again, f)(inp))
            assert cos.min() > 0.99, f
    fresh, _, _ = load_clip(TEST_MODEL)
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict(ckpt["state_dict"])
    with pytest.raises(ValueError, match=r"storage='int4'; allowed: fp32, fp16, int8"):
        save_clip_checkpoint(tmp_path / "bad.pt", model, TEST_MODEL, storage="int4")
    assert not (tmp_path / "bad.pt").exists()


def test_real_open_clip_architecture_builds_prompts():
    model, _, tok = load_clip("ViT-B-32")
    net = PromptedCLIP(model, tok, ["cat", "dog", "car"], text_prompt=True, n_ctx=2, visual_prompt=True, n_vpt=2,
                       vpt_deep=True)
    assert net.ctx.shape == (2, 512) and net.vpt.shape == (12, 2, 768)
    with torch.no_grad():
        out = net(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------ prompts


def test_prompted_text_with_zero_context_matches_plain_encoder(clip):
    """With ctx = the token embeddings of the words, CoOp's encoder equals CLIP's encode_text."""
    model, tok = clip
    net = PromptedCLIP(model, tok, ["cat", "sports car"], ctx_init="a photo of a")
    assert net.n_ctx == 4
    with torch.no_grad():
        ours = net.text_features()
        ref = F.normalize(model.encode_text(tok(["a photo of a cat.", "a photo of a sports car."])), dim=-1)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_visual_prompts_change_features_and_pool_without_them(clip):
    model, tok = clip
    x = torch.randn(3, 3, 32, 32)
    net = PromptedCLIP(model, tok, ["a", "b"], text_prompt=False, visual_prompt=True, n_vpt=3, vpt_deep=True)
    with torch.no_grad():
        plain = F.normalize(model.encode_image(x), dim=-1)
        prompted = net.image_features(x)
        net.vpt.zero_()
        assert net.image_features(x).shape == plain.shape == (3, 32)
    assert not torch.allclose(prompted, plain, atol=1e-4)


def test_only_prompts_train_clip_frozen_and_not_in_optimizer(clip):
    model, tok = clip
    before = copy.deepcopy(model.state_dict())
    net = PromptedCLIP(model, tok, ["cat", "dog", "bird"], n_ctx=2, visual_prompt=True, vpt_deep=True)
    params = net.prompt_parameters()
    assert {id(p) for p in params} == {id(net.ctx), id(net.vpt)}
    assert all(not p.requires_grad for p in net.clip.parameters())
    opt = torch.optim.Adam(params, lr=0.05)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not held & {id(p) for p in net.clip.parameters()}
    net.train()
    assert not net.clip.training  # frozen: no dropout / patch dropout
    toy = _toy_corpus(3, 2)  # three coloured squares, two images each
    x, y = clip_image_transform(model)(toy.images), toy.concept
    ctx0 = net.ctx.detach().clone()
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not torch.equal(net.ctx, ctx0)
    assert losses[-1] < 0.75 * losses[0]  # the prompts alone fit the batch
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_named_prompt_parameters_are_the_parameters_outside_clip(clip):
    for kind in ("coop", "vpt", "unigram"):
        net = PromptedCLIP(clip[0], clip[1], ["a", "b"], **prompt_flags(kind, ctx_init=None, n_ctx=2))
        expected = [(n, p) for n, p in net.named_parameters() if not n.startswith("clip.")]
        got = list(net.named_prompt_parameters())
        assert [n for n, _ in got] == [n for n, _ in expected] and all(a is b for (_, a), (_, b) in zip(got, expected))
        assert {"coop": ["ctx"], "vpt": ["vpt"], "unigram": ["ctx", "vpt"]}[kind] == [n for n, _ in got]
        assert [id(p) for p in net.prompt_parameters()] == [id(p) for _, p in got]


def test_growing_classes_and_masking(clip):
    model, tok = clip
    net = PromptedCLIP(model, tok, {0: "cat", 1: "dog"}, class_specific=True, n_ctx=2)
    assert net.ctx.shape == (2, 2, 32)
    with torch.no_grad():
        net.ctx[0].add_(1.0)  # a "learned" row must survive growth
    row0 = net.ctx[0].detach().clone()
    assert net.add_classes({1: "dog", 4: "car"}) == [4]
    assert net.ctx.shape == (3, 2, 32) and torch.equal(net.ctx[0], row0)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5)
    assert (out[:, [2, 3]] == -1e4).all() and (out[:, [0, 1, 4]] > -1e3).all()
    with pytest.raises(ValueError, match="class 1 is 'dog', not 'wolf'"):
        net.add_classes({1: "wolf"})
    with pytest.raises(ValueError, match="empty name"):
        net.add_classes({7: " "})


def test_prompted_clip_bad_arguments(clip):
    model, tok = clip
    with pytest.raises(ValueError, match=r"n_ctx=0 must be >= 1"):
        PromptedCLIP(model, tok, ["a"], n_ctx=0)
    with pytest.raises(ValueError, match=r"n_vpt=0 must be >= 1"):
        PromptedCLIP(model, tok, ["a"], visual_prompt=True, n_vpt=0)
    with pytest.raises(ValueError, match="no classes yet"):
        PromptedCLIP(model, tok, []).text_features()
    rn, _, rtok = load_clip("RN50")
    with pytest.raises(ValueError, match="needs a ViT image tower"):
        PromptedCLIP(rn, rtok, ["a"], visual_prompt=True)


def test_text_prompts_train_over_the_convolutional_project_clip():
    """fscl-rn-64 (ModifiedResNet image tower, as many image-tower parameters as fscl-vit-p8-64's ViT):
    CoOp prompts give logits over the class names and only the context receives gradients."""
    torch.manual_seed(0)
    rn, _, tok = load_clip("fscl-rn-64")
    vit, _, _ = load_clip("fscl-vit-p8-64")
    assert type(rn.visual).__name__ == "ModifiedResNet"
    n_rn, n_vit = (sum(p.numel() for p in m.visual.parameters()) for m in (rn, vit))
    assert (n_rn, n_vit) == (2_768_666, 2_768_640)  # equal to 0.001%: a tower comparison at one size
    net = PromptedCLIP(rn, tok, ["cat", "dog", "bird"], n_ctx=4)
    x = clip_image_transform(rn)(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    out = net(x)
    assert out.shape == (2, 3)
    F.cross_entropy(out, torch.tensor([0, 2])).backward()
    assert net.ctx.grad is not None and net.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in rn.parameters())
    with pytest.raises(ValueError, match="needs a ViT image tower; ModifiedResNet"):
        PromptedCLIP(rn, tok, ["a"], visual_prompt=True)


def test_state_dict_round_trip_with_class_specific_context(clip):
    model, tok = clip
    a = PromptedCLIP(model, tok, {0: "cat", 1: "dog", 2: "car"}, class_specific=True, n_ctx=2, visual_prompt=True)
    with torch.no_grad():
        a.ctx.normal_()
        a.vpt.normal_()
    buf = {k: v for k, v in a.state_dict().items()}
    b = PromptedCLIP(model, tok, class_specific=True, n_ctx=2, visual_prompt=True, seed=5)
    b.load_state_dict(buf)
    assert b.names == a.names and torch.equal(b.ctx, a.ctx) and torch.equal(b.vpt, a.vpt)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# ------------------------------------------------------------------------------ regulator


@pytest.mark.parametrize("mode", ["affine", "gated"])
def test_untrained_regulator_is_the_identity(mode):
    reg = GradientRegulator({"ctx": 32, "vpt": 16}, mode=mode)
    g = torch.randn(3, 4, 32)
    assert torch.equal(reg("ctx", g), g)
    with pytest.raises(KeyError, match="no regulator for prompt 'nope'"):
        reg("nope", g)
    with pytest.raises(ValueError, match="gradient width 32 != 16"):
        reg("vpt", g)


def test_regulator_bad_arguments():
    with pytest.raises(ValueError, match="mode='scale'; allowed: affine, gated"):
        GradientRegulator({"ctx": 4}, mode="scale")
    with pytest.raises(ValueError, match="widths is empty"):
        GradientRegulator({})


def test_identity_regulator_equals_plain_tuning(clip):
    from avalanche_fscl.benchmarks.base_to_new import tune_prompts

    model, tok = clip
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(12) % 3
    tf = clip_image_transform(model)
    nets = [PromptedCLIP(model, tok, ["a", "b", "c"], visual_prompt=True, input_transform=tf, seed=1) for _ in range(2)]
    tune_prompts(nets[0], x, y, steps=4, lr=0.05, seed=3)
    tune_prompts(nets[1], x, y, steps=4, lr=0.05, seed=3, regulator=GradientRegulator({"ctx": 32, "vpt": 32}))
    assert torch.equal(nets[0].ctx, nets[1].ctx) and torch.equal(nets[0].vpt, nets[1].vpt)


def test_prompt_gradient_clipping_bounds_every_update(clip):
    from avalanche_fscl.benchmarks.base_to_new import run_base_to_new, tune_prompts

    model, tok = clip
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(12) % 3
    tf = clip_image_transform(model)
    make = lambda: PromptedCLIP(model, tok, ["a", "b", "c"], visual_prompt=True, input_transform=tf, seed=1)  # noqa: E731
    free, clipped, loose = make(), make(), make()
    start = torch.cat([free.ctx.detach().flatten(), free.vpt.detach().flatten()])
    moved = lambda n: (torch.cat([n.ctx.detach().flatten(), n.vpt.detach().flatten()]) - start).norm().item()  # noqa: E731
    # one step, no momentum history: the step is lr * the (clipped) gradient, lr = 0.05 at the cosine's start
    tune_prompts(free, x, y, steps=1, lr=0.05, seed=3)
    tune_prompts(clipped, x, y, steps=1, lr=0.05, seed=3, clip_grad=1e-3)
    tune_prompts(loose, x, y, steps=1, lr=0.05, seed=3, clip_grad=1e6)
    assert moved(free) > 0.05 * 1e-3 * 10  # the unclipped gradient is far above the bound ...
    assert moved(clipped) == pytest.approx(0.05 * 1e-3, rel=1e-3)  # ... which the clipped step meets exactly
    assert torch.equal(loose.ctx, free.ctx) and torch.equal(loose.vpt, free.vpt)  # a loose bound changes nothing
    with pytest.raises(ValueError, match=r"clip_grad=0.0: must be > 0"):
        run_base_to_new(".", clip_grad=0.0)


def test_prompted_clip_reuses_frozen_image_features_only_without_visual_prompts(clip):
    from avalanche_fscl.benchmarks.base_to_new import _accuracy
    from avalanche_fscl.models.clip import FeatureCache

    model, tok = clip
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 5, (40,), generator=g)
    names, tf = ["cat", "dog", "car", "tree", "cup"], clip_image_transform(model)
    cache = FeatureCache()
    net = PromptedCLIP(model, tok, names, input_transform=tf, seed=0, feature_cache=cache)
    plain = PromptedCLIP(model, tok, names, input_transform=tf, seed=0, feature_cache=None)
    for step in range(2):  # the second pass reads the cache; the text side follows the changed context
        assert _accuracy(net, x, y, range(5), batch=16) == _accuracy(plain, x, y, range(5), batch=16)
        assert (cache.hits, cache.misses) == (40 * step, 40)
        with torch.no_grad():
            d = torch.randn(net.ctx.shape, generator=g)
            net.ctx.add_(d), plain.ctx.add_(d)
        net.eval(), plain.eval()  # drops the text caches, as after tune_prompts
    # prompt gradients still flow (the text side); the image side never needs a graph
    net.train()
    net(x[:4].float() / 255).logsumexp(1).sum().backward()
    assert net.ctx.grad is not None and net.ctx.grad.abs().sum() > 0
    vnet = PromptedCLIP(model, tok, ["cat", "dog"], visual_prompt=True, input_transform=tf, feature_cache=cache)
    n = len(cache)
    _accuracy(vnet, x, y % 2, range(2))
    assert len(cache) == n  # visual prompts change the image features: never cached


# ------------------------------------------------------------------------------ GRAM


def test_task_sampler_support_and_query_from_different_domains():
    rng = np.random.default_rng(0)
    concept = np.repeat(np.arange(6), 20)
    # two visual domains per concept, far apart; two caption topics
    text = np.stack([np.eye(8)[c // 3] + 0.01 * rng.standard_normal(8) for c in range(6)])
    dom = np.tile([0, 1], 60)
    img = np.stack([np.eye(8)[4 + dom[i]] + 0.01 * rng.standard_normal(8) for i in range(120)])
    s = GRAMTaskSampler(text, img, concept, topics=2, domains=2, ways=3, shots=2, queries=3, seed=0)
    for _ in range(10):
        si, ys, qi, yq, concepts = s.sample(rng)
        assert len(si) == 6 and len(qi) == 9 and len(set(concepts)) == 3
        assert len({c // 3 for c in concepts}) == 1  # one topic
        assert set(dom[si]) != set(dom[qi]) and len(set(dom[si])) == len(set(dom[qi])) == 1
        assert (concept[si] == np.asarray(concepts)[ys]).all() and (concept[qi] == np.asarray(concepts)[yq]).all()
    with pytest.raises(ValueError, match="no topic has two domains"):
        GRAMTaskSampler(text, img, concept, topics=2, domains=2, ways=4, shots=2, queries=3)


def test_task_sampler_query_new_adds_unseen_concepts_of_the_topic_to_the_query():
    rng = np.random.default_rng(1)
    concept = np.repeat(np.arange(8), 20)
    text = np.stack([np.eye(8)[c // 4] + 0.01 * rng.standard_normal(8) for c in range(8)])  # topics {0-3}, {4-7}
    dom = np.tile([0, 1], 80)
    img = np.stack([np.eye(8)[4 + dom[i]] + 0.01 * rng.standard_normal(8) for i in range(160)])
    s = GRAMTaskSampler(text, img, concept, topics=2, domains=2, ways=2, shots=2, queries=3, query_new=5, seed=0)
    for _ in range(10):
        si, ys, qi, yq, concepts = s.sample(rng)
        assert len(concepts) == 4 and len({c // 4 for c in concepts}) == 1  # 2 support + the topic's other 2 (of 5 asked)
        assert set(ys) == {0, 1} and set(yq) == {0, 1, 2, 3} and len(qi) == 12
        assert set(concept[si]) == set(concepts[:2])  # unseen concepts never in the support
        assert (concept[qi] == np.asarray(concepts)[yq]).all() and set(dom[si]).isdisjoint(dom[qi])


def test_meta_training_resumes_exactly_and_learns_a_regulator(tmp_path):
    corpus = _toy_corpus()
    cfg = GRAMMetaConfig(clip_model=TEST_MODEL, prompt="unigram", topics=1, domains=2, ways=2, shots=2, queries=3,
                         episodes=6, meta_batch=2, inner_lr=0.5, regulator_lr=0.01)
    straight = load_gram_checkpoint(meta_train_gram(cfg, tmp_path / "a", corpus=corpus, progress=False))
    last = meta_train_gram(cfg, tmp_path / "b", corpus=corpus, progress=False, max_episodes=3)
    assert last.name == "last.pt" and not (tmp_path / "b" / "gram.pt").exists()
    resumed = load_gram_checkpoint(meta_train_gram(cfg, tmp_path / "b", corpus=corpus, progress=False))
    for k in straight["prompts"]:
        assert torch.equal(straight["prompts"][k], resumed["prompts"][k]), k
    for k in straight["regulator"]:
        assert torch.equal(straight["regulator"][k], resumed["regulator"][k]), k
    # the meta-trained regulator is no longer the identity
    from avalanche_fscl.models.gram import build_regulator

    reg = build_regulator(straight)
    g = torch.randn(4, 32)
    assert not torch.allclose(reg("ctx", g), g)
    with pytest.raises(ValueError, match="written with other settings"):
        meta_train_gram(GRAMMetaConfig(**{**cfg.__dict__, "episodes": 7}), tmp_path / "b", corpus=corpus, progress=False)
    # a last.pt written before a config field existed resumes when the field keeps its default
    from avalanche_fscl.benchmarks.io import load_torch, save_torch

    meta_train_gram(cfg, tmp_path / "c", corpus=corpus, progress=False, max_episodes=3)
    ck = load_torch(tmp_path / "c" / "last.pt")
    del ck["config"]["query_new"]
    save_torch(tmp_path / "c" / "last.pt", ck)
    with pytest.raises(ValueError, match="written with other settings"):
        meta_train_gram(GRAMMetaConfig(**{**cfg.__dict__, "query_new": 1}), tmp_path / "c", corpus=corpus, progress=False)
    again = load_gram_checkpoint(meta_train_gram(cfg, tmp_path / "c", corpus=corpus, progress=False))
    assert torch.equal(again["prompts"]["ctx"], straight["prompts"]["ctx"])


def test_second_order_meta_training_runs_through_attention_and_differs_from_first_order(tmp_path):
    # the fused CPU attention kernel has no double backward; second order must still train
    cfg = dict(clip_model=TEST_MODEL, prompt="unigram", topics=1, domains=2, ways=2, shots=2, queries=3,
               episodes=2, meta_batch=1, inner_steps=2, inner_lr=0.5, regulator_lr=0.01)
    first = load_gram_checkpoint(meta_train_gram(GRAMMetaConfig(**cfg), tmp_path / "fo", corpus=_toy_corpus(), progress=False))
    second = load_gram_checkpoint(meta_train_gram(GRAMMetaConfig(**cfg, first_order=False), tmp_path / "so",
                                                  corpus=_toy_corpus(), progress=False))
    assert second["config"]["first_order"] is False
    for k, v in second["prompts"].items():
        assert torch.isfinite(v).all(), k
    assert any(not torch.allclose(v, first["regulator"][k]) for k, v in second["regulator"].items()), \
        "the second-order term reaches the regulator"


def test_meta_training_under_bf16_autocast_learns_in_fp32_tensors(tmp_path):
    cfg = dict(clip_model=TEST_MODEL, prompt="unigram", topics=1, domains=2, ways=2, shots=2, queries=3,
               episodes=3, meta_batch=2, inner_lr=0.5, regulator_lr=0.01)
    plain = load_gram_checkpoint(meta_train_gram(GRAMMetaConfig(**cfg), tmp_path / "fp32", corpus=_toy_corpus(), progress=False))
    mixed = load_gram_checkpoint(meta_train_gram(GRAMMetaConfig(**cfg, autocast="bf16"), tmp_path / "bf16",
                                                 corpus=_toy_corpus(), progress=False))
    assert mixed["config"]["autocast"] == "bf16" and plain["config"]["autocast"] is None
    for k, v in mixed["prompts"].items():
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
        assert not torch.equal(v, plain["prompts"][k]), "bf16 forward passes give other (rounded) updates"
        assert torch.allclose(v, plain["prompts"][k], atol=0.05), "but the same learning, up to bf16 rounding"
    with pytest.raises(ValueError, match=r"autocast='half'; allowed: None, 'bf16', 'fp16'"):
        GRAMMetaConfig(autocast="half")


def test_meta_config_bad_arguments():
    with pytest.raises(ValueError, match="prompt='text'; allowed: coop, vpt, unigram"):
        GRAMMetaConfig(prompt="text")
    with pytest.raises(ValueError, match="domains=1 must be >= 2"):
        GRAMMetaConfig(domains=1)
    with pytest.raises(ValueError, match="regulator='x'"):
        GRAMMetaConfig(regulator="x")
    with pytest.raises(ValueError, match="query_new=-1 must be >= 0"):
        GRAMMetaConfig(query_new=-1)
    with pytest.raises(ValueError, match="inner_clip_grad=0 must be > 0"):
        GRAMMetaConfig(inner_clip_grad=0)


def test_meta_training_inner_clipping_changes_only_what_it_bounds(tmp_path):
    """A bound far above the inner gradient leaves meta-training bit-identical; a tight one
    changes what is learned (the inner steps, hence the outer gradients, differ)."""
    corpus = _toy_corpus()
    kw = dict(clip_model=TEST_MODEL, prompt="coop", topics=1, domains=2, ways=2, shots=2, queries=3, episodes=2,
              meta_batch=1, inner_steps=2, inner_lr=0.5, regulator_lr=0.05)
    runs = {}
    for name, clip_grad in [("none", None), ("loose", 1e9), ("tight", 1e-6)]:
        torch.manual_seed(0)
        path = meta_train_gram(GRAMMetaConfig(inner_clip_grad=clip_grad, **kw), tmp_path / name, corpus=corpus, progress=False)
        runs[name] = load_gram_checkpoint(path)
    assert torch.equal(runs["none"]["prompts"]["ctx"], runs["loose"]["prompts"]["ctx"])
    assert all(torch.equal(runs["none"]["regulator"][k], runs["loose"]["regulator"][k]) for k in runs["none"]["regulator"])
    assert not torch.equal(runs["none"]["prompts"]["ctx"], runs["tight"]["prompts"]["ctx"])


def test_meta_training_visual_inner_lr_applies_to_the_visual_tokens_only(tmp_path):
    """``inner_lr_visual`` equal to ``inner_lr`` is the unset run bit for bit; another value changes
    UNIGRAM's meta-training (the visual tokens' inner steps differ) and is ignored by CoOp."""
    corpus = _toy_corpus()
    kw = dict(clip_model=TEST_MODEL, topics=1, domains=2, ways=2, shots=2, queries=3, episodes=2, meta_batch=1,
              inner_steps=2, inner_lr=0.5, regulator_lr=0.05)
    runs = {}
    for prompt, name, visual in [("unigram", "unset", None), ("unigram", "same", 0.5), ("unigram", "big", 50.0),
                                 ("coop", "unset", None), ("coop", "big", 50.0)]:
        torch.manual_seed(0)
        path = meta_train_gram(GRAMMetaConfig(prompt=prompt, inner_lr_visual=visual, **kw), tmp_path / f"{prompt}_{name}",
                               corpus=corpus, progress=False)
        runs[prompt, name] = load_gram_checkpoint(path)
    same, unset, big = runs["unigram", "same"], runs["unigram", "unset"], runs["unigram", "big"]
    assert all(torch.equal(same["prompts"][k], unset["prompts"][k]) for k in unset["prompts"])
    assert all(torch.equal(same["regulator"][k], unset["regulator"][k]) for k in unset["regulator"])
    assert not torch.equal(big["prompts"]["vpt"], unset["prompts"]["vpt"])
    assert torch.equal(runs["coop", "big"]["prompts"]["ctx"], runs["coop", "unset"]["prompts"]["ctx"])
    with pytest.raises(ValueError, match="inner_lr_visual=0 must be > 0"):
        GRAMMetaConfig(inner_lr_visual=0)
    with pytest.raises(ValueError, match="inner_lr=-1 must be > 0"):
        GRAMMetaConfig(inner_lr=-1)


@pytest.mark.parametrize("prompt", ["coop", "vpt"])
def test_meta_training_with_unseen_query_concepts_moves_the_init(tmp_path, prompt):
    corpus = _toy_corpus()
    cfg = GRAMMetaConfig(clip_model=TEST_MODEL, prompt=prompt, topics=1, domains=2, ways=2, shots=2, queries=3,
                         query_new=2, episodes=2, meta_batch=1, inner_lr=0.5, outer_lr=0.01)
    torch.manual_seed(0)
    init = PromptedCLIP(*load_clip(TEST_MODEL)[::2], seed=0, **prompt_flags(prompt, ctx_init="a photo of a")).prompt_state()
    ck = load_gram_checkpoint(meta_train_gram(cfg, tmp_path, corpus=corpus, progress=False))
    key = "ctx" if prompt == "coop" else "vpt"
    assert ck["prompts"][key].shape == init[key].shape and not torch.allclose(ck["prompts"][key], init[key])


def test_meta_config_overrides_parse_yaml_values_and_name_the_fields():
    from avalanche_fscl.models.gram import meta_config_overrides

    assert meta_config_overrides(["inner_steps=5", "inner_lr=0.2", "first_order=false", "sources=[cifar10]"]) == {
        "inner_steps": 5, "inner_lr": 0.2, "first_order": False, "sources": ["cifar10"]}
    with pytest.raises(ValueError, match="base-to-new --meta-set: 'inner_step=5' is not KEY=VALUE with KEY one of .*inner_steps"):
        meta_config_overrides(["inner_step=5"], "base-to-new --meta-set")
    with pytest.raises(ValueError, match="'episodes' is not KEY=VALUE"):
        meta_config_overrides(["episodes"])


def test_base_to_new_report_only_summarises_stored_cells_and_merges_writers(tmp_path):
    from avalanche_fscl.benchmarks.base_to_new import _merge_cell, run_base_to_new

    kw = dict(shots=[4], seeds=[0, 1], methods=["coop", "gram_coop"], steps=200, lr=0.01)
    settings = {"clip_model": "fscl-vit-p8-64", "clip_checkpoint": "fscl", "shift": "lowres", "steps": 200, "lr": 0.01,
                "validation": False, "n_ctx": 4, "ctx_init": "a photo of a", "n_vpt": 4, "vpt_deep": False, "meta_episodes": 300}
    cell = lambda b, n: {"base": b, "new": n, "hm": round(2 * b * n / (b + n), 2), "cifar10": 50.0, "sec_per_step": 0.2,  # noqa: E731
                         "seconds": 1.0}
    res_path = tmp_path / "results.json"
    # two writers, each holding only its own cells in memory: neither loses the other's
    a = {"settings": settings, "cells": {"coop/K4/seed0": cell(8.0, 6.0)}}
    b = {"settings": settings, "cells": {"gram_coop/K4/seed0": cell(9.0, 9.0)}}
    _merge_cell(res_path, a, "coop/K4/seed0")
    _merge_cell(res_path, b, "gram_coop/K4/seed0")
    a["cells"]["coop/K4/seed1"] = cell(10.0, 8.0)
    _merge_cell(res_path, a, "coop/K4/seed1")
    assert sorted(json.loads(res_path.read_text())["cells"]) == ["coop/K4/seed0", "coop/K4/seed1", "gram_coop/K4/seed0"]
    r = run_base_to_new(tmp_path, report_only=True, **kw)
    assert r["summary"]["coop/K4"]["base"] == {"mean": 9.0, "std": 1.41, "n": 2}
    assert r["summary"]["gram_coop/K4"]["new"] == {"mean": 9.0, "std": 0.0, "n": 1}  # one of two seeds so far
    md = (tmp_path / "results.md").read_text()
    assert "| coop | 2 | 9.00 ± 1.41 | 7.00 ± 1.41 |" in md and "| gram_coop | 1 | 9.00 ± 0.00 |" in md
    with pytest.raises(ValueError, match="holds another setting"):
        run_base_to_new(tmp_path, report_only=True, **{**kw, "lr": 0.002})


def test_base_to_new_rejects_meta_settings_it_fixes_itself(tmp_path):
    from avalanche_fscl.benchmarks.base_to_new import run_base_to_new

    with pytest.raises(ValueError, match=r"meta=\['prompt'\]: not settable here; allowed: .*inner_lr"):
        run_base_to_new(tmp_path, meta={"prompt": "vpt"})
    with pytest.raises(ValueError, match=r"meta=\['bogus'\]"):
        run_base_to_new(tmp_path, meta={"bogus": 1})
    with pytest.raises(ValueError, match=r"methods \['gram_coop_noregs'\]; allowed: .*gram_coop_noreg, gram_coop_noinit"):
        run_base_to_new(tmp_path, methods=["gram_coop_noregs"])
    with pytest.raises(ValueError, match=r"autocast='fp8'; allowed: None, 'bf16', 'fp16'"):
        run_base_to_new(tmp_path, autocast="fp8")
    with pytest.raises(ValueError, match=r"meta=\['autocast'\]: not settable here"):  # --autocast sets both
        run_base_to_new(tmp_path, meta={"autocast": "bf16"})
    assert not any(tmp_path.iterdir())  # nothing written before the arguments are checked


_TOY_NAMES = {0: "red thing", 1: "green thing", 2: "blue thing", 3: "dark stone"}


def _train_in_naive(clip, plugin):
    """Two 2-class experiences of 4 images each, one SGD step (lr 0.5) per experience, in
    Avalanche's ``Naive`` with ``plugin``. Returns the net, the class ids it knows after each
    experience and the norm of each experience's change of the text context."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import as_classification_dataset
    from avalanche.training import Naive

    from avalanche_fscl.streams.data import TensorImageDataset as TensorDataset

    model, tok = clip
    torch.manual_seed(0)
    net = PromptedCLIP(model, tok, n_ctx=2, input_transform=clip_image_transform(model))
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8).float() / 255
    ds = [as_classification_dataset(TensorDataset(x[:4], torch.tensor([0, 1, 0, 1]))),
          as_classification_dataset(TensorDataset(x[4:], torch.tensor([2, 3, 2, 3])))]
    bm = benchmark_from_datasets(train=ds, test=ds)
    strat = Naive(model=net, optimizer=torch.optim.SGD(net.prompt_parameters(), lr=0.5), train_mb_size=4,
                  train_epochs=1, eval_mb_size=4, plugins=[plugin], evaluator=None)
    seen, moved = [], []
    for exp in bm.train_stream:
        before = net.ctx.detach().clone()
        strat.train(exp)
        seen.append(sorted(net.names))
        moved.append((net.ctx.detach() - before).norm().item())
    return net, seen, moved


def test_gram_plugin_loads_init_regulates_and_grows(tmp_path, clip):
    """In an Avalanche strategy: the init is loaded once, every update is regulated, class
    names grow; the same strategy without regulation gives a different update."""
    from avalanche_fscl.plugins import GRAMPlugin

    cfg = GRAMMetaConfig(clip_model=TEST_MODEL, prompt="coop", topics=1, domains=2, ways=2, shots=2, queries=3,
                         episodes=4, meta_batch=2, inner_lr=0.5, regulator_lr=0.05, n_ctx=2, ctx_init=None)
    path = meta_train_gram(cfg, tmp_path / "m", corpus=_toy_corpus(), progress=False)
    ck = load_gram_checkpoint(path)

    plugin = GRAMPlugin(str(path), class_names=_TOY_NAMES)
    net, seen, _ = _train_in_naive(clip, plugin)
    assert seen == [[0, 1], [0, 1, 2, 3]]
    assert plugin.init_loaded and plugin.state_dict() == {"init_loaded": True}
    plain, _, _ = _train_in_naive(clip, GRAMPlugin(str(path), regulate=False, class_names=_TOY_NAMES))
    init_only = ck["prompts"]["ctx"]
    assert not torch.equal(net.ctx.detach().cpu(), init_only)  # trained from the init
    assert not torch.allclose(net.ctx, plain.ctx)  # the regulator changed the updates
    with pytest.raises(FileNotFoundError, match="meta-train-gram"):
        GRAMPlugin(str(tmp_path / "none.pt"))


def test_gram_plugin_clips_prompt_updates_in_an_avalanche_strategy(clip):
    """``clip_grad`` bounds every prompt update (one step per experience here: lr * clip_grad),
    and bad values are refused by the plugin and by the registered strategies."""
    from avalanche_fscl.plugins import GRAMPlugin
    from avalanche_fscl.strategies import make_spec

    _, _, free = _train_in_naive(clip, GRAMPlugin(None, class_names=_TOY_NAMES))
    _, _, clipped = _train_in_naive(clip, GRAMPlugin(None, class_names=_TOY_NAMES, clip_grad=1e-4))
    assert all(f > 0.5 * 1e-4 * 10 for f in free)  # the unclipped steps are far larger than the bound
    assert clipped == pytest.approx([0.5 * 1e-4] * 2, rel=1e-3)  # each clipped step meets it exactly
    with pytest.raises(ValueError, match=r"clip_grad=-1: must be > 0"):
        GRAMPlugin(None, clip_grad=-1)
    with pytest.raises(ValueError, match=r"clip_grad=0: must be > 0"):
        make_spec("coop", {"clip_grad": 0})


# ------------------------------------------------------------------------------ pretraining


def test_pretrain_clip_resumes_exactly_and_learns(tmp_path, data_root):
    require_dataset(data_root, "cifar10_jpeg")
    require_dataset(data_root, "tiny_imagenet")
    from avalanche_fscl.benchmarks.pretrain_clip import load_recipe, pretrain_clip

    recipe = load_recipe("test_tiny", epochs=1)
    a = pretrain_clip(recipe, tmp_path / "a", data_root, max_steps=16, progress=False)
    pretrain_clip(recipe, tmp_path / "b", data_root, max_steps=7, progress=False)
    b = pretrain_clip(recipe, tmp_path / "b", data_root, max_steps=16, progress=False)
    assert a["steps"] == b["steps"] == 16 and not a["finished"]
    from avalanche_fscl.benchmarks.machine import cpu_model
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["cpu_model"] == cpu_model()
    sa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    losses = sa["state"]["losses"]
    assert losses == sb["state"]["losses"] and len(losses) == 16
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05  # the contrastive loss falls
    with pytest.raises(ValueError, match=r"another recipe \(changed: \{'lr'"):
        pretrain_clip(load_recipe("test_tiny", epochs=1, lr=0.01), tmp_path / "b", data_root, max_steps=17, progress=False)


def test_pretrain_clip_precision_is_decided_again_on_another_machine(tmp_path, data_root):
    """``precision: auto`` is timed again when a run resumes on another CPU type (bf16 can be 16x
    slower on one and 2x faster on another); not on the same one. A fixed precision changed on
    resume (``allow_recipe_change``) applies from that step. ``precision_history`` says which."""
    require_dataset(data_root, "cifar10_jpeg")
    from avalanche_fscl.benchmarks.machine import cpu_model
    from avalanche_fscl.benchmarks.pretrain_clip import load_recipe, pretrain_clip

    here = cpu_model()
    auto = load_recipe("test_tiny", precision="auto", batch_size=8)
    pretrain_clip(auto, tmp_path / "a", data_root, max_steps=1, progress=False)
    pretrain_clip(auto, tmp_path / "a", data_root, max_steps=2, progress=False)  # same machine: kept
    ck = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    hist = ck["state"]["precision_history"]
    assert len(hist) == 1 and hist[0]["from_step"] == 0 and hist[0]["machine"] == here
    assert set(hist[0]["timing_s"]) == {"fp32", "bf16"}
    ck["state"]["precision_machine"] = "another CPU (family 0; avx512_bf16)"
    torch.save(ck, tmp_path / "a" / "last.pt")
    s = pretrain_clip(auto, tmp_path / "a", data_root, max_steps=3, progress=False)
    assert [h["from_step"] for h in s["precision_history"]] == [0, 2]
    assert s["precision_history"][1]["machine"] == here and s["precision"] in ("fp32", "bf16")
    old = torch.load(tmp_path / "a" / "last.pt", weights_only=True)  # a run from before the history:
    for key in ("precision_history", "precision_machine"):          # its first precision is kept in it
        del old["state"][key]
    old["state"]["precision"] = "fp32"
    torch.save(old, tmp_path / "a" / "last.pt")
    s = pretrain_clip(auto, tmp_path / "a", data_root, max_steps=4, progress=False)
    assert [(h["from_step"], h["machine"]) for h in s["precision_history"]] == [(0, None), (3, here)]

    fixed = load_recipe("test_tiny", precision="fp32", batch_size=8)
    pretrain_clip(fixed, tmp_path / "b", data_root, max_steps=1, progress=False)
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    ck["state"]["precision_machine"] = "another CPU"
    torch.save(ck, tmp_path / "b" / "last.pt")
    s = pretrain_clip(fixed, tmp_path / "b", data_root, max_steps=2, progress=False)  # fixed: kept anywhere
    assert [(h["from_step"], h["precision"]) for h in s["precision_history"]] == [(0, "fp32")]
    s = pretrain_clip(load_recipe("test_tiny", precision="bf16", batch_size=8), tmp_path / "b", data_root,
                      max_steps=3, progress=False, allow_recipe_change=True)
    assert s["precision"] == "bf16"
    assert [(h["from_step"], h["precision"]) for h in s["precision_history"]] == [(0, "fp32"), (2, "bf16")]
    assert s["recipe_changes"] == [{"step": 2, "changed": {"precision": ["fp32", "bf16"]}}]


def test_pretrain_clip_warm_restart_starts_from_the_init_weights(tmp_path, data_root):
    """``init``: the run starts from the checkpoint's weights (not a random init), records the
    file's sha256, and refuses a checkpoint of another architecture."""
    require_dataset(data_root, "cifar10_jpeg")
    import hashlib

    from avalanche_fscl.benchmarks.pretrain_clip import load_recipe, pretrain_clip
    from avalanche_fscl.models.clip import save_clip_checkpoint

    torch.manual_seed(123)
    src, _, _ = load_clip("fscl-vit-test")
    path = tmp_path / "init.pt"
    save_clip_checkpoint(path, src, "fscl-vit-test")
    warm = pretrain_clip(load_recipe("test_tiny", init=str(path)), tmp_path / "warm", data_root, max_steps=0, progress=False)
    pretrain_clip(load_recipe("test_tiny"), tmp_path / "cold", data_root, max_steps=0, progress=False)
    w = torch.load(tmp_path / "warm" / "last.pt", weights_only=True)["model"]
    c = torch.load(tmp_path / "cold" / "last.pt", weights_only=True)["model"]
    for k, v in src.state_dict().items():
        assert torch.equal(w[k], v), k
    assert not torch.equal(c["visual.conv1.weight"], w["visual.conv1.weight"])
    assert warm["init_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    other, _, _ = load_clip("fscl-rn-64")
    save_clip_checkpoint(tmp_path / "rn.pt", other, "fscl-rn-64")
    with pytest.raises(ValueError, match="architecture 'fscl-rn-64', not model_name='fscl-vit-test'"):
        pretrain_clip(load_recipe("test_tiny", init=str(tmp_path / "rn.pt")), tmp_path / "bad", data_root, max_steps=0, progress=False)


def test_pretrain_clip_lock_image_trains_the_text_tower_only(tmp_path, data_root):
    """LiT (``lock_image``): the image tower's weights and BatchNorm statistics stay those of
    ``init`` and are not in the optimizer; the text tower and logit scale learn."""
    require_dataset(data_root, "cifar10_jpeg")
    from avalanche_fscl.benchmarks.pretrain_clip import load_recipe, pretrain_clip
    from avalanche_fscl.models.clip import save_clip_checkpoint

    torch.manual_seed(5)
    src, _, _ = load_clip("fscl-rn-64")
    start = {k: v.clone() for k, v in src.state_dict().items()}
    save_clip_checkpoint(tmp_path / "init.pt", src, "fscl-rn-64", storage="fp32")
    recipe = load_recipe("test_tiny", model="fscl-rn-64", batch_size=16, init=str(tmp_path / "init.pt"), lock_image=True)
    pretrain_clip(recipe, tmp_path / "lit", data_root, max_steps=3, progress=False)
    ck = torch.load(tmp_path / "lit" / "last.pt", weights_only=True)
    w = ck["model"]
    visual = [k for k in start if k.startswith("visual.")]
    assert any("running_mean" in k for k in visual), "the tower has BatchNorm statistics to keep"
    for k in visual:
        assert torch.equal(w[k], start[k]), k
    moved = [k for k in start if not k.startswith("visual.") and not torch.equal(w[k], start[k])]
    assert "text_projection" in moved and "logit_scale" in moved and any(k.startswith("transformer.") for k in moved)
    n_text = sum(1 for n, p in src.named_parameters() if not n.startswith("visual."))
    assert sum(len(g["params"]) for g in ck["optimizer"]["param_groups"]) == n_text
    with pytest.raises(ValueError, match=r"lock_image='yes'; allowed: true, false"):
        load_recipe("test_tiny", lock_image="yes")


def test_pretrain_clip_channels_last_is_a_layout_not_a_change(tmp_path, data_root):
    """``channels_last`` (a runtime field) trains the convolutional tower in that layout and
    takes the same steps up to float rounding; a run may resume with the other layout."""
    require_dataset(data_root, "cifar10_jpeg")
    from avalanche_fscl.benchmarks.pretrain_clip import load_recipe, pretrain_clip

    runs = {}
    for cl in (True, False):
        recipe = load_recipe("test_tiny", model="fscl-rn-64", channels_last=cl, batch_size=16)
        pretrain_clip(recipe, tmp_path / str(cl), data_root, max_steps=3, progress=False)
        runs[cl] = torch.load(tmp_path / str(cl) / "last.pt", weights_only=True)
    w = {cl: r["model"]["visual.layer1.0.conv2.weight"] for cl, r in runs.items()}
    assert w[True].is_contiguous(memory_format=torch.channels_last) and not w[True].is_contiguous()
    assert w[False].is_contiguous()
    assert not torch.equal(w[True], load_clip("fscl-rn-64")[0].state_dict()["visual.layer1.0.conv2.weight"])
    assert np.allclose(runs[True]["state"]["losses"], runs[False]["state"]["losses"], atol=1e-4)
    # AdamW divides each gradient by its own running norm, so a weight whose gradient is at the
    # rounding level can step by up to 2 lr differently under another conv kernel (seen on an AMD
    # EPYC: 1 element in 12k); a layout that changed the computation would move most weights.
    adam_bound = 2 * sum(1e-3 * (s + 1) / 5 for s in range(3))  # 2 x the three warm-up step sizes
    off = total = 0
    for k, v in runs[True]["model"].items():
        d = (v.float() - runs[False]["model"][k].float()).abs()
        assert d.max() <= adam_bound, (k, d.max().item())
        off, total = off + int((d > 1e-4).sum()), total + d.numel()
    assert off <= 1e-4 * total, (off, total)
    resumed = pretrain_clip(load_recipe("test_tiny", model="fscl-rn-64", channels_last=False, batch_size=16),
                            tmp_path / "True", data_root, max_steps=4, progress=False)
    assert resumed["steps"] == 4


def test_every_kept_checkpoint_is_tested():
    assert {"fscl-vit-p8-64 fscl", "fscl-rn-64 fscl", "fscl-rn-64-w32 fscl"} <= set(kept_clip_checkpoints())


@pytest.mark.parametrize("kept", sorted(kept_clip_checkpoints()))
def test_kept_checkpoints_are_the_recorded_ones(kept, data_root):
    """Each kept CLIP (``"<model> <tag>"``) matches the sha256 its pretraining summary recorded, and
    reproduces its recorded CIFAR-10 zero-shot accuracy on a 1,000-image test subset (binomial std
    ~1.5 points)."""
    import hashlib

    from avalanche_fscl.benchmarks.pretrain_clip import zero_shot_accuracy
    from avalanche_fscl.models.clip import kept_clip_path
    from avalanche_fscl.streams.captions import cifar10_images, clip_templates

    name, tag = kept.split(" ")
    path = kept_clip_path(name, tag)
    summary = json.loads(path.with_suffix(".summary.json").read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == summary["final_sha256"]
    require_dataset(data_root, "cifar10_jpeg")
    model, _, tok = load_clip(name, pretrained=tag)
    x, y, names = cifar10_images(data_root, "test")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:1000]
    acc = zero_shot_accuracy(model, tok, x[idx], y[idx], names, clip_templates("cifar10", data_root))
    assert abs(acc - summary["zero_shot"]["cifar10_test"]) < 5.0, (acc, summary["zero_shot"])


def test_zero_shot_accuracy_matches_a_manual_argmax(clip):
    from avalanche_fscl.benchmarks.pretrain_clip import zero_shot_accuracy

    model, tok = clip
    x = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(20) % 4
    names, templates = ["cat", "dog", "car", "tree"], ["a photo of a {c}.", "a {c}."]
    with torch.no_grad():
        w = encode_class_names(model, tok, names, templates)
        pred = (F.normalize(model.encode_image(clip_image_transform(model)(x)), dim=-1) @ w.T).argmax(1)
    assert zero_shot_accuracy(model, tok, x, y, names, templates, batch_size=7) == pytest.approx(100 * (pred == y).float().mean().item())


def test_contrastive_loss_mixup_targets_match_a_hand_computation():
    """Mixup targets: image i = 0.7 x_i + 0.3 x_perm(i) puts 0.7 on its own concept's texts and
    0.3 on its partner's; texts take the matching columns, normalised. lam = 1 is the plain loss."""
    from avalanche_fscl.benchmarks.pretrain_clip import contrastive_loss

    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    concept, perm, scale = torch.tensor([0, 0, 1, 2]), torch.tensor([2, 3, 0, 1]), torch.tensor(10.0)
    logits = scale * img @ txt.T
    i2t = torch.tensor([[0.35, 0.35, 0.3, 0.0], [0.35, 0.35, 0.0, 0.3], [0.15, 0.15, 0.7, 0.0], [0.15, 0.15, 0.0, 0.7]])
    t2i = i2t.T / i2t.T.sum(1, keepdim=True)
    hand = (-(i2t * logits.log_softmax(1)).sum(1).mean() - (t2i * logits.T.log_softmax(1)).sum(1).mean()) / 2
    assert contrastive_loss(img, txt, scale, concept, (0.7, perm)).item() == pytest.approx(hand.item(), rel=1e-6)
    plain = contrastive_loss(img, txt, scale, concept)
    assert contrastive_loss(img, txt, scale, concept, (1.0, perm)).item() == pytest.approx(plain.item(), rel=1e-6)
    diag = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2
    assert contrastive_loss(img, txt, scale, None, (1.0, perm)).item() == pytest.approx(diag.item(), rel=1e-6)


def test_all_concepts_loss_matches_a_hand_computation():
    """Images against every concept's caption; captions of the batch's concepts against its images.
    With one image per concept, in caption order, it is the plain (diagonal) CLIP loss."""
    from avalanche_fscl.benchmarks.pretrain_clip import all_concepts_loss, contrastive_loss

    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(5, 8), dim=1)
    concept, scale = torch.tensor([0, 0, 2, 4]), torch.tensor(10.0)
    logits = scale * img @ txt.T
    i2t = -sum(logits[i].log_softmax(0)[concept[i]] for i in range(4)) / 4
    rows = {0: [0, 1], 2: [2], 4: [3]}  # concept -> its images in the batch (concepts 1, 3 absent)
    t2i = -sum(sum(logits[:, c].log_softmax(0)[j] for j in imgs) / len(imgs) for c, imgs in rows.items()) / 3
    assert all_concepts_loss(img, txt, scale, concept).item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-6)
    square = txt[:4]
    assert all_concepts_loss(img, square, scale, torch.arange(4)).item() == pytest.approx(
        contrastive_loss(img, square, scale, None).item(), rel=1e-6)


def test_pretrain_clip_all_concepts_loss_learns(tmp_path, data_root):
    require_dataset(data_root, "cifar10_jpeg")
    from avalanche_fscl.benchmarks.pretrain_clip import load_recipe, pretrain_clip

    pretrain_clip(load_recipe("test_tiny", loss="all_concepts"), tmp_path / "a", data_root, max_steps=16, progress=False)
    losses = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state"]["losses"]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05
    with pytest.raises(ValueError, match="mixup applies to loss unicl or clip, not all_concepts"):
        load_recipe("test_tiny", loss="all_concepts", mixup=0.4)
    with pytest.raises(ValueError, match=r"loss='mse'; allowed: unicl, clip, all_concepts, prototypes"):
        load_recipe("test_tiny", loss="mse")


def test_fit_image_prototypes_starts_at_the_class_means_and_fits_the_features():
    from avalanche_fscl.benchmarks.pretrain_clip import fit_image_prototypes

    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    labels = torch.arange(4).repeat_interleave(30)
    feats = F.normalize(centres[labels] + 0.9 * torch.randn(120, 8, generator=g), dim=1)
    means = F.normalize(torch.stack([feats[labels == c].mean(0) for c in range(4)]), dim=1)
    assert torch.allclose(fit_image_prototypes(feats, labels, 4, steps=0), means, atol=1e-6)
    seen = []
    rows = fit_image_prototypes(feats, labels, 4, scale=100.0, steps=200, on_step=lambda k, w: seen.append((k, w)))
    assert [k for k, _ in seen] == list(range(1, 201)) and torch.equal(seen[-1][1], rows)
    assert rows.shape == (4, 8) and torch.allclose(rows.norm(dim=1), torch.ones(4), atol=1e-5)

    def fit(w):
        return (feats @ w.T).argmax(1).eq(labels).float().mean().item()
    assert fit(rows) > fit(means) + 0.02  # the fitted rows classify the training features better
    ref = means.clone().requires_grad_(True)  # the same steps by autograd on the plain loss
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(100.0 * feats @ F.normalize(ref, dim=1).T, labels).backward()
        opt.step()
    assert torch.allclose(rows, F.normalize(ref.detach(), dim=1), atol=1e-4)
    with pytest.raises(ValueError, match=r"labels must cover every concept in \[0, 5\); missing \[4\]"):
        fit_image_prototypes(feats, labels, 5, steps=0)
    with pytest.raises(ValueError, match=r"labels must be 120 concept ids in \[0, 3\), got 120 in \[0, 3\]"):
        fit_image_prototypes(feats, labels, 3, steps=0)


def test_fit_image_prototypes_label_smoothing_is_cross_entropys():
    from avalanche_fscl.benchmarks.pretrain_clip import fit_image_prototypes, load_recipe

    g = torch.Generator().manual_seed(1)
    labels = torch.arange(5).repeat_interleave(20)
    feats = F.normalize(F.normalize(torch.randn(5, 8, generator=g), dim=1)[labels] + 0.8 * torch.randn(100, 8, generator=g), dim=1)
    means = fit_image_prototypes(feats, labels, 5, steps=0)
    rows = fit_image_prototypes(feats, labels, 5, scale=50.0, steps=100, label_smoothing=0.3)
    ref = means.clone().requires_grad_(True)  # the same steps by autograd, F.cross_entropy's smoothing
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(50.0 * feats @ F.normalize(ref, dim=1).T, labels, label_smoothing=0.3).backward()
        opt.step()
    assert torch.allclose(rows, F.normalize(ref.detach(), dim=1), atol=1e-4)
    plain = fit_image_prototypes(feats, labels, 5, scale=50.0, steps=100)
    assert (rows - plain).abs().max() > 1e-3  # smoothing changes the fit
    for bad in (1.0, -0.1, True):
        with pytest.raises(ValueError, match=rf"label_smoothing={bad!r} must be a number in \[0, 1\)"):
            fit_image_prototypes(feats, labels, 5, steps=1, label_smoothing=bad)
    assert load_recipe("test_tiny", prototype_label_smoothing=0.3).prototype_label_smoothing == 0.3
    with pytest.raises(ValueError, match=r"prototype_label_smoothing=1 must be a number in \[0, 1\)"):
        load_recipe("test_tiny", prototype_label_smoothing=1)


def test_prototype_distillation_loss_matches_a_hand_computation():
    from avalanche_fscl.benchmarks.pretrain_clip import prototype_distillation_loss

    g = torch.Generator().manual_seed(3)
    f, protos, txt = (F.normalize(torch.randn(n, 6, generator=g), dim=1) for n in (5, 4, 4))
    p = torch.softmax(20.0 * f @ protos.T, 1)
    q = torch.softmax(20.0 * f @ txt.T, 1)
    hand = (p * (p.log() - q.log())).sum(1).mean()
    assert prototype_distillation_loss(f, txt, protos, 20.0).item() == pytest.approx(hand.item(), rel=1e-5)
    assert prototype_distillation_loss(f, protos, protos, 20.0).item() == pytest.approx(0.0, abs=1e-6)


def test_pretrain_clip_prototypes_aligns_the_text_tower_and_resumes_exactly(tmp_path, data_root):
    """``loss: prototypes``: the locked image tower is untouched, the prototypes and the corpus
    features are stored with the run, the captions learn to classify the features as the
    prototypes do (the loss falls), and a stopped run resumes to the same weights."""
    require_dataset(data_root, "cifar10_jpeg")
    from avalanche_fscl.benchmarks.pretrain_clip import load_recipe, pretrain_clip
    from avalanche_fscl.models.clip import save_clip_checkpoint

    torch.manual_seed(7)
    src, _, _ = load_clip("fscl-vit-test")
    save_clip_checkpoint(tmp_path / "init.pt", src, "fscl-vit-test", storage="fp32")
    recipe = load_recipe("test_tiny", init=str(tmp_path / "init.pt"), lock_image=True, loss="prototypes",
                         prototype_steps=5, lr=0.003, warmup_steps=1)
    pretrain_clip(recipe, tmp_path / "a", data_root, max_steps=12, progress=False)
    pretrain_clip(recipe, tmp_path / "b", data_root, max_steps=5, progress=False)
    pretrain_clip(recipe, tmp_path / "b", data_root, max_steps=12, progress=False)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for k, v in src.state_dict().items():
        assert torch.equal(a["model"][k], b["model"][k]), k
        if k.startswith("visual."):
            assert torch.equal(a["model"][k], v), k
    protos = a["state"]["prototypes"]
    # one row per concept of the test recipe's corpus (10 CIFAR-10 classes + one per image-text pair)
    assert protos.shape[0] > 10 and protos.shape[1] == 32 and torch.equal(protos, b["state"]["prototypes"])
    feats = a["state"]["prototype_features"]
    assert feats.shape[1] == 32 and len(feats) % 2 == 0  # every corpus image and its mirror image
    assert torch.allclose(protos.norm(dim=1), torch.ones(len(protos)), atol=1e-5)
    losses = a["state"]["losses"]
    assert losses == b["state"]["losses"] and losses[-1] < losses[0] - 0.02
    with pytest.raises(ValueError, match="loss=prototypes needs lock_image=true"):
        load_recipe("test_tiny", loss="prototypes")
    with pytest.raises(ValueError, match="mixup applies to loss unicl or clip, not prototypes"):
        load_recipe("test_tiny", loss="prototypes", lock_image=True, mixup=0.4)
    with pytest.raises(ValueError, match=r"prototype_scale=0 must be a number > 0"):
        load_recipe("test_tiny", prototype_scale=0)
    with pytest.raises(ValueError, match=r"prototype_steps=-1 must be an integer >= 0"):
        load_recipe("test_tiny", prototype_steps=-1)


def test_color_augment_is_seeded_bounded_and_off_by_default():
    from avalanche_fscl.benchmarks.pretrain_clip import color_augment

    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    assert color_augment(x, 0.0, 0.0, g) is x and torch.equal(g.get_state(), torch.Generator().manual_seed(1).get_state())
    a = color_augment(x, 0.4, 0.2, torch.Generator().manual_seed(2))
    b = color_augment(x, 0.4, 0.2, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    grey = (a[:, 0] == a[:, 1]).all((1, 2)) & (a[:, 1] == a[:, 2]).all((1, 2))
    assert 3 <= int(grey.sum()) <= 25, "about 20% of 64 images in grey"
    ratio = a.mean((1, 2, 3)) / x.mean((1, 2, 3))
    assert ratio.min() < 0.85 and ratio.max() > 1.15, "brightness varies per image"
    all_grey = color_augment(x, 0.0, 1.0, torch.Generator().manual_seed(3))
    assert torch.allclose(all_grey[:, 0], (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1))


def test_pretrain_recipe_errors():
    from avalanche_fscl.benchmarks.pretrain_clip import load_recipe

    with pytest.raises(ValueError, match=r"--config 'nope': no such file or recipe; shipped: .*vit_p8_64"):
        load_recipe("nope")
    with pytest.raises(ValueError, match=r"unknown keys \['lr_max'\]"):
        load_recipe("test_tiny", lr_max=1)
    with pytest.raises(ValueError, match=r"mixup=-0.5 must be a number >= 0 \(0 = off\)"):
        load_recipe("test_tiny", mixup=-0.5)
    with pytest.raises(ValueError, match=r"mixup='strong' must be a number >= 0"):
        load_recipe("test_tiny", mixup="strong")
    with pytest.raises(ValueError, match=r"init='nowhere/x.pt': no such checkpoint file; allowed: 'fscl'"):
        load_recipe("test_tiny", init="nowhere/x.pt")
    with pytest.raises(ValueError, match=r"color_jitter=1.5 must be a number in \[0, 1\] \(0 = off\)"):
        load_recipe("test_tiny", color_jitter=1.5)
    with pytest.raises(ValueError, match=r"grayscale_p=-0.1 must be a number in \[0, 1\]"):
        load_recipe("test_tiny", grayscale_p=-0.1)
    with pytest.raises(ValueError, match=r"channels_last='yes'; allowed: true, false, null \(auto\)"):
        load_recipe("test_tiny", channels_last="yes")


def test_every_shipped_recipe_loads_or_chains_from_another_recipes_run():
    """A shipped recipe loads as written (its model registered, a kept ``init`` present), or its only
    problem is that its ``init`` is the ``final.pt`` of another shipped recipe's run, not made on this
    machine yet (the README's whole path runs them in order)."""
    from pathlib import Path

    import yaml

    from avalanche_fscl.benchmarks.pretrain_clip import RECIPE_DIR, list_recipes, load_recipe
    from avalanche_fscl.models.clip import list_clip_models

    names = list_recipes()
    assert {"vit_p8_64", "rn_64_w32_prototypes_ls", "vit_p8_64_prototypes_ls"} <= set(names)
    for name in names:
        raw = yaml.safe_load((RECIPE_DIR / f"{name}.yaml").read_text())
        assert raw["model"] in list_clip_models(), name
        init = raw.get("init")
        chained = isinstance(init, str) and init.startswith("runs/clip/") and init.endswith("/final.pt")
        if chained and not Path(init).is_file():
            assert init.split("/")[2] in names, f"{name}: init {init} is no shipped recipe's run"
            with pytest.raises(ValueError, match="no such checkpoint file"):
                load_recipe(name)
        else:
            assert load_recipe(name).model == raw["model"]


def test_cli_pretrain_clip_bad_config_is_one_line(capsys):
    from avalanche_fscl.benchmarks.cli import main

    assert main(["pretrain-clip", "--config", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file or recipe" in err[0]


# ------------------------------------------------------------------------------ strategies


def test_clip_strategies_registered_with_clear_errors():
    from avalanche_fscl.strategies import list_strategies, make_spec

    assert {"zeroshot_clip", "coop", "vpt", "gram_coop", "gram_vpt", "unigram"} <= set(list_strategies())
    with pytest.raises(ValueError, match="gram=True needs meta_checkpoint"):
        make_spec("gram_coop")
    with pytest.raises(ValueError, match=r"n_ctx=0 must be >= 1"):
        make_spec("coop", {"n_ctx": 0, "ctx_init": None})
    with pytest.raises(ValueError, match=r"clip_model='ViT-Nope'"):
        make_spec("coop", {"clip_model": "ViT-Nope"})


def test_clip_strategy_in_the_runner(tmp_path):
    """zeroshot_clip and coop through the runner on the embedded digits stream."""
    from avalanche_fscl.benchmarks import config_from_dict
    from avalanche_fscl.benchmarks.runner import run_benchmark

    args = {"clip_model": TEST_MODEL, "clip_checkpoint": None, "base_epochs": 2, "novel_epochs": 2, "lr": 0.01}
    cfg = config_from_dict({"stream": {"name": "digits_fscil"}, "strategies": ["zeroshot_clip", "coop"],
                            "strategy_args": {"coop": args, "zeroshot_clip": {"clip_model": TEST_MODEL, "clip_checkpoint": None}},
                            "seeds": [0], "output": str(tmp_path / "out"), "wandb": {"mode": "off"}})
    run_benchmark(cfg, progress=False)
    res = {r: json.loads((tmp_path / "out" / "runs" / r / "seed0.json").read_text()) for r in ("zeroshot_clip", "coop")}
    assert res["coop"]["hparams"]["lr"] == 0.01 and res["zeroshot_clip"]["hparams"]["clip_model"] == TEST_MODEL
    assert res["coop"]["table"] != res["zeroshot_clip"]["table"]  # coop trained its prompts


def test_clip_strategy_keeps_clip_frozen_and_grows_names():
    from avalanche_fscl.strategies import StrategyContext, create_strategy
    from avalanche_fscl.streams import get_stream

    scenario = get_stream("digits_fscil", seed=0)
    ctx = StrategyContext(scenario, seed=0)
    strat = create_strategy("coop", ctx, strategy_args={"clip_model": TEST_MODEL, "clip_checkpoint": None,
                                                        "base_epochs": 1, "novel_epochs": 2, "lr": 0.05})
    net = strat.model
    before = {k: v.clone() for k, v in net.clip.state_dict().items()}
    ctx0 = net.ctx.detach().clone()
    for s, exp in enumerate(scenario.train_stream[:2]):
        strat.train(exp)
        assert sorted(net.names) == sorted(exp.classes_seen_so_far)
        assert [net.names[c] for c in sorted(net.names)] == scenario.class_names[: len(net.names)]
    held = {id(p) for g in strat.optimizer.param_groups for p in g["params"]}
    assert held == {id(net.ctx)}
    assert not torch.equal(net.ctx.detach(), ctx0)
    for k, v in net.clip.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_clip_image_encoder_is_frozen_unit_norm_and_stays_in_eval(clip):
    from avalanche_fscl.models.clip import CLIPImageEncoder

    model, _ = clip
    enc = CLIPImageEncoder(model).train()
    assert enc.out_dim == model.text_projection.shape[1] and not enc.visual.training
    assert all(not p.requires_grad for p in enc.parameters())
    f = enc(torch.rand(3, 1, 20, 20))  # grayscale, any size: the CLIP transform resizes
    assert f.shape == (3, enc.out_dim) and not f.requires_grad
    assert torch.allclose(f.norm(dim=1), torch.ones(3), atol=1e-5)


def test_feature_cache_gives_identical_features_and_reuses_them(clip):
    from avalanche_fscl.models.clip import CLIPImageEncoder, FeatureCache

    model, _ = clip
    cache = FeatureCache(max_entries=5)
    enc, plain = CLIPImageEncoder(model, feature_cache=cache), CLIPImageEncoder(model, feature_cache=None)
    x = torch.rand(4, 3, 20, 20)
    want = plain(x)
    assert torch.equal(enc(x), want) and (cache.hits, cache.misses, len(cache)) == (0, 4, 4)
    y = torch.cat([x[2:], torch.rand(2, 3, 20, 20)])  # 2 seen rows, 2 new ones
    # cached rows come from another batch: equal up to the rounding of batched matmuls
    assert torch.allclose(enc(y), plain(y), atol=1e-5) and (cache.hits, cache.misses) == (2, 6)
    assert len(cache) == 5  # bounded: the least recently used row left
    assert torch.equal(enc(x[2:3]), want[2:3]) and cache.hits == 3  # recently used rows stay
    # new weights -> a new key: no stale features
    with torch.no_grad():
        sd = {k: v + 0.01 if v.is_floating_point() else v for k, v in enc.state_dict().items()}
    enc.load_state_dict(sd)
    fresh = CLIPImageEncoder(model, feature_cache=None)
    assert torch.equal(enc(x[:1]), fresh(x[:1])) and not torch.allclose(enc(x[:1]), want[:1], atol=1e-3)
    with pytest.raises(ValueError, match="max_entries must be >= 0"):
        FeatureCache(max_entries=-1)
    off = FeatureCache(device_types=())  # e.g. GPU inputs with the CPU-only default
    assert torch.equal(CLIPImageEncoder(model, feature_cache=off)(x), fresh(x)) and len(off) == 0
    import pickle
    back = pickle.loads(pickle.dumps(cache))  # pickles carry settings, not features
    assert len(back) == 0 and back.max_entries == 5 and copy.deepcopy(cache) is cache


def test_clip_feature_strategies_never_train_the_encoder():
    from avalanche_fscl.strategies import StrategyContext, create_strategy, get_strategy
    from avalanche_fscl.streams import get_stream

    scenario = get_stream("digits_fscil", seed=0)
    ctx = StrategyContext(scenario, seed=0)
    strat = create_strategy("raml_clip", ctx, strategy_args={"clip_model": TEST_MODEL, "clip_checkpoint": None,
                                                             "meta_episodes": 3, "meta_ways": 3})
    enc = strat.model.backbone
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    for exp in scenario.train_stream[:2]:
        strat.train(exp)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k
    held = {id(p) for g in strat.optimizer.param_groups for p in g["params"]}
    assert not held & {id(p) for p in enc.parameters()}
    assert "train_encoder" not in get_strategy("raml_clip").hyperparameters()  # fixed: the encoder is frozen
    with pytest.raises(ValueError, match="clip_model='ViT-X'; allowed: .*fscl-vit-p8-64"):
        get_strategy("knn_clip")(clip_model="ViT-X")


@pytest.mark.slow
def test_clip_feature_strategies_learn_digits_with_the_kept_clip(tmp_path):
    """prototype_clip / knn_clip / raml_clip on the digits stream with the kept CLIP: far above chance (10%)."""
    from avalanche_fscl.benchmarks import config_from_dict
    from avalanche_fscl.benchmarks.runner import run_benchmark

    names = ["prototype_clip", "knn_clip", "raml_clip"]
    cfg = config_from_dict({"stream": {"name": "digits_fscil"}, "strategies": names,
                            "strategy_args": {"raml_clip": {"meta_episodes": 20}}, "seeds": [0],
                            "output": str(tmp_path / "out"), "wandb": {"mode": "off"}})
    run_benchmark(cfg, progress=False)
    for name in names:
        last = json.loads((tmp_path / "out" / "runs" / name / "seed0.json").read_text())["table"]["sessions"][-1]
        assert last["acc"] > 0.45, (name, last)  # measured 0.58-0.63 (10 classes)


@pytest.mark.cuda
def test_prompt_tuning_on_cuda_with_bf16():
    model, _, tok = load_clip(TEST_MODEL, device="cuda")
    net = PromptedCLIP(model, tok, ["a", "b"], visual_prompt=True, autocast="bf16").cuda()
    opt = torch.optim.SGD(net.prompt_parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 32, 32, device="cuda"), torch.tensor([0, 1, 0, 1], device="cuda")
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert net.ctx.dtype == torch.float32 and net.ctx.grad is not None and torch.isfinite(loss)


@pytest.mark.cuda
def test_gram_meta_training_and_unigram_strategy_on_cuda_with_bf16(tmp_path):
    """GRAM end to end on a GPU: meta-training writes a device-free checkpoint; UNIGRAM (text +
    visual prompts, regulated, bf16 autocast) trains its prompts on CUDA with CLIP frozen."""
    from avalanche_fscl.strategies import StrategyContext, create_strategy
    from avalanche_fscl.streams import get_stream

    device = "cuda"
    cfg = GRAMMetaConfig(clip_model=TEST_MODEL, prompt="unigram", topics=1, domains=2, ways=2, shots=2, queries=3,
                         episodes=4, meta_batch=2, inner_lr=0.5, regulator_lr=0.01)
    ck = load_gram_checkpoint(meta_train_gram(cfg, tmp_path / "m", device=device, corpus=_toy_corpus(), progress=False))
    tensors = [*ck["prompts"].values(), *ck["regulator"].values()]
    assert tensors and all(t.device.type == "cpu" and torch.isfinite(t).all() for t in tensors)

    scenario = get_stream("digits_fscil", seed=0)
    strat = create_strategy("unigram", StrategyContext(scenario, seed=0, device=device), strategy_args={
        "clip_model": TEST_MODEL, "clip_checkpoint": None, "meta_checkpoint": str(tmp_path / "m" / "gram.pt"),
        "base_epochs": 1, "novel_epochs": 1, "lr": 0.05, "autocast": "bf16"})
    net = strat.model
    frozen = {k: v.detach().clone() for k, v in net.clip.state_dict().items()}
    prompts = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    assert set(prompts) >= {"ctx"} and len(prompts) >= 2, "text and visual prompts"
    for exp in scenario.train_stream[:2]:
        strat.train(exp)
    assert all(p.device.type == device and p.dtype == torch.float32 for p in net.parameters())
    assert all(not torch.equal(p.detach(), prompts[n]) for n, p in net.named_parameters() if p.requires_grad)
    assert all(torch.equal(v, frozen[k]) for k, v in net.clip.state_dict().items())
    logits = net(torch.rand(3, *scenario.train_stream[0].dataset[0][0].shape, device=device))
    assert logits.shape == (3, len(net.names)) and torch.isfinite(logits).all()
