"""How far GRAM's inner loop moves each prompt kind, per inner lr (diagnostic of 2026-12-07, eighteenth session).

From the plain prompts (CoOp "a photo of a", VPT tokens of seed 0) and plain gradients (no regulator), on 8
meta-training tasks of the validation corpus (Tiny ImageNet labels 0-49 + CIFAR-10 train + the pairs; the
kept CLIP `fscl-vit-p8-64`; 5-way 4-shot, 8 queries, `query_new` 5), 5 SGD steps at each inner lr; prints the
mean drop of the support loss and of the query loss (support and unseen concepts). Output: inner_lr_probe.txt.

    python benchmarks/results/validation_clip/gram_meta/per_kind/inner_lr_probe.py coop 0.05,0.2,1 8
    python benchmarks/results/validation_clip/gram_meta/per_kind/inner_lr_probe.py vpt 0.2,1,5,20,100 8
    python benchmarks/results/validation_clip/gram_meta/per_kind/inner_lr_probe.py unigram 0.2 8

An optional fourth argument names another checkpoint of `fscl-vit-p8-64` (twenty-fourth session:
`fscl:prototypes_ls`; output `../../fscl_vit_prototypes_ls_gray/inner_lr_probe.txt`).

The inner step is `meta_train_gram`'s with the identity regulator (kept in step with models/gram.py by hand:
a record of a measurement, not library code).
"""
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from avalanche_fscl.models.clip import clip_image_transform, encode_class_names, load_clip
from avalanche_fscl.models.gram import GRAMMetaConfig, GRAMTaskSampler, PromptedCLIP, _embed_corpus, _task_logits, prompt_flags
from avalanche_fscl.streams.captions import caption_corpus

kind, lrs, n_tasks = sys.argv[1], [float(x) for x in sys.argv[2].split(",")], int(sys.argv[3])
checkpoint = sys.argv[4] if len(sys.argv) > 4 else "fscl"
torch.set_num_threads(1)
c = GRAMMetaConfig(prompt=kind, query_new=5, clip_checkpoint=checkpoint, tiny_classes=list(range(50)))
torch.manual_seed(c.seed)
clip, _, tok = load_clip(c.clip_model, c.clip_checkpoint)
net = PromptedCLIP(clip, tok, seed=c.seed, **prompt_flags(c.prompt, c.n_ctx, c.ctx_init, c.n_vpt, c.vpt_deep))
tr = clip_image_transform(clip)
corpus = caption_corpus(None, c.sources, tiny_classes=c.tiny_classes)
with torch.no_grad():
    text_emb, img_emb = _embed_corpus(net, corpus, tr, "cpu")
sampler = GRAMTaskSampler(text_emb, img_emb, corpus.concept.numpy(), topics=c.topics, domains=c.domains, ways=c.ways,
                          shots=c.shots, queries=c.queries, query_new=c.query_new, seed=c.seed)
zero_shot = None
if not net.text_prompt:  # VPT alone: CLIP's zero-shot class embeddings, as in meta_train_gram
    zero_shot = torch.cat([encode_class_names(clip, tok, [n], ("a photo of a {c}.",)) for n in corpus.concept_names])
g = np.random.default_rng(123)
tasks = [sampler.sample(g) for _ in range(n_tasks)]
for lr in lrs:
    drop_q, drop_s, t0 = [], [], time.time()
    for s_idx, ys, q_idx, yq, concepts in tasks:
        names = [corpus.concept_names[i] for i in concepts]
        zs = None if zero_shot is None else zero_shot[concepts]
        zs_sup = None if zs is None else zs[: c.ways]
        xs, xq = tr(corpus.images[torch.from_numpy(s_idx)]), tr(corpus.images[torch.from_numpy(q_idx)])
        ys, yq = torch.from_numpy(ys), torch.from_numpy(yq)
        fast = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_prompt_parameters()}
        with torch.no_grad():
            q0 = F.cross_entropy(_task_logits(net, xq, names, fast, zs), yq).item()
            s0 = F.cross_entropy(_task_logits(net, xs, names[: c.ways], fast, zs_sup), ys).item()
        for _ in range(5):
            loss = F.cross_entropy(_task_logits(net, xs, names[: c.ways], fast, zs_sup), ys)
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {n: (w - lr * gr).detach().requires_grad_(True) for (n, w), gr in zip(fast.items(), grads)}
        with torch.no_grad():
            drop_q.append(q0 - F.cross_entropy(_task_logits(net, xq, names, fast, zs), yq).item())
            drop_s.append(s0 - F.cross_entropy(_task_logits(net, xs, names[: c.ways], fast, zs_sup), ys).item())
    print(f"{kind} inner_lr {lr}: query-loss drop {np.mean(drop_q):+.4f} ± {np.std(drop_q):.4f}, "
          f"support-loss drop {np.mean(drop_s):+.4f}  ({time.time() - t0:.0f} s)", flush=True)
