"""`docsynth`: DocSynthv2 (arXiv 2406.08354, PAPERS.md §8), the jaxmm LLM trained as a decoder over document token
sequences (`jaxmm.data.docsynth`): layout + text (`data.with_text=True`) or layout only, on procedural multi-column
pages whose text sets the text boxes' heights (configs/docsynth.py; results in docs/results/docsynth.md).

Training: next-token cross-entropy over every real token after <sos>. At the end (`on_end`), with the trained
model: perplexity of the eval pages (all tokens, and the layout tokens only: categories, geometry, <eos>, the
numbers both models share); `samples` unconditional constrained samples (nucleus top_p) scored with Alignment and
Overlap (x100, LayoutGAN++'s definitions, `jaxmm.metrics.layout`), layout-FID against the eval pages, the share
of samples that parse, and text-box coherence; category-conditioned samples (the eval pages' category sequences)
scored with Max-IoU against the eval pages; the same metrics of the real eval pages as the reference row; a PNG
of rendered samples (`samples.png`: unconditional, category-conditioned, completion of the eval pages' titles).

Coherence [our measure]: the share of text elements (title, text, list) whose box height is exactly the height
their text needs in their box width (`jaxmm.data.docsynth.text_height`, the rule the pages were made with). A
layout-only sample has no text: its boxes get the text of a random training element of the same category (the
layout-then-text pipeline baseline).

Layout-FID [reconstruction; LayoutGAN++ trains its FID network as a discriminator with a reconstruction loss]:
features are the pooled hidden layer of a small DeepSets encoder trained here, from a fixed seed on the
training pages, to tell real pages from corrupted ones (boxes jittered, moved or resized, categories swapped).
It is the same network in every run of a config (same data, same seed), so FIDs compare across runs.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from train.task import Datasets, Task
from train.tasks import register

MAX_SLOTS = 16  # elements the FID encoder sees per page


def _vocab(config):
    from jaxmm.data.docsynth import DocVocab

    return DocVocab(bins=config.data.bins)


def _pages(config, split: str, n: int):
    """Procedural pages of a split (fixed seeds, independent of config.seed: every run sees the same data)."""
    from jaxmm.data.docsynth import procedural_document

    base = {"train": 1_000_000, "eval": 2_000_000, "fid": 3_000_000}[split]
    d = config.data
    return [procedural_document(base + i, max_elements=d.max_elements, max_words=d.max_words) for i in range(n)]


def _examples(config, pages):
    from jaxmm.data.docsynth import serialize

    d, vocab = config.data, _vocab(config)
    out, skipped = [], 0
    for p in pages:
        ids = serialize(p, vocab, with_text=d.with_text)
        if len(ids) > d.max_length:
            skipped += 1
            continue
        row = np.full(d.max_length, vocab.pad, np.int32)
        row[:len(ids)] = ids
        kinds = np.array([vocab.kind(t) in ("category", "geometry", "eos") for t in row])
        out.append({"ids": row, "mask": (np.arange(d.max_length) < len(ids)).astype(np.int32),
                    "layout": kinds.astype(np.int32)})
    return out, skipped


def _token_nll(model, params, batch):
    ids, mask = batch["ids"], batch["mask"]
    logits = model.apply({"params": params}, ids[:, :-1], attention_mask=mask[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]), mask[:, 1:].astype(jnp.float32)


class DocSynth(Task):
    metric = "eval_loss"

    def default_config(self):
        return ml_collections.ConfigDict(dict(
            model=dict(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=128),
            data=dict(with_text=True, bins=32, max_length=96, max_elements=8, max_words=10, train_examples=2000,
                      eval_examples=200),
            task_args=dict(samples=64, temperature=1.0, top_k=0, top_p=0.9, fid_steps=300, render=6)))

    def build_model(self, config):
        from jaxmm.models.llm import LLM, tiny_llm_config

        dtype = jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else None
        return LLM(tiny_llm_config(_vocab(config).size, **config.model, dtype=dtype, remat=config.train.remat))

    def datasets(self, config):
        import grain

        d = config.data
        train, skip_t = _examples(config, _pages(config, "train", d.train_examples))
        evals, skip_e = _examples(config, _pages(config, "eval", d.eval_examples))
        return Datasets(grain.MapDataset.source(train), grain.MapDataset.source(evals),
                        {"skipped_too_long": skip_t + skip_e})

    def model_inputs(self, batch):
        return {"input_ids": batch["ids"], "attention_mask": batch["mask"]}

    def loss_fn(self, model, params, batch, rng, extra=None):
        nll, w = _token_nll(model, params, batch)
        lw = w * batch["layout"][:, 1:]
        return (nll * w).sum() / w.sum(), {"layout_nll": (nll * lw).sum() / jnp.maximum(lw.sum(), 1)}

    def eval_metrics(self, model, params, batch):
        nll, w = _token_nll(model, params, batch)
        lw = w * batch["layout"][:, 1:]
        return {"loss": (nll * w).sum(1) / jnp.maximum(w.sum(1), 1),
                "layout_nll": (nll * lw).sum(1) / jnp.maximum(lw.sum(1), 1)}

    def on_end(self, ctx):
        if jax.process_index() != 0:
            return None
        return evaluate_samples(self.config, ctx.model, jax.device_get(ctx.state.params), ctx.workdir)


# ------------------------------------------------------------------------------------------ evaluation
def _perplexities(config, model, params):
    from jaxmm.metrics.layout import perplexity

    evals, _ = _examples(config, _pages(config, "eval", config.data.eval_examples))
    fn = jax.jit(lambda p, b: _token_nll(model, p, b))
    all_nll, layout_nll = [], []
    for i in range(0, len(evals), 64):
        batch = {k: np.stack([e[k] for e in evals[i:i + 64]]) for k in evals[0]}
        nll, w = map(np.asarray, fn(params, batch))
        all_nll.append(nll[w > 0])
        layout_nll.append(nll[(w * batch["layout"][:, 1:]) > 0])
    return {"perplexity": perplexity(np.concatenate(all_nll)),
            "layout_perplexity": perplexity(np.concatenate(layout_nll))}


def coherence(layouts, fill_from=None, seed: int = 0) -> float:
    """Share of text elements whose box height equals `text_height` of their text at their width (grid units).
    fill_from: {category: [texts]} to draw text for elements that have none (layout-only samples)."""
    from jaxmm.data.docsynth import GRID, TEXT_CATEGORIES, text_height

    rng = np.random.default_rng(seed)
    hits, total = 0, 0
    for lay in layouts:
        for e in lay.elements:
            if e.category not in TEXT_CATEGORIES or None in e.box:
                continue
            text = e.text
            if text is None and fill_from is not None and fill_from.get(e.category):
                pool = fill_from[e.category]
                text = pool[rng.integers(len(pool))]
            total += 1
            if text is not None:
                w, h = round(e.box[2] * GRID), round(e.box[3] * GRID)
                hits += text_height(e.category, text, w) == h
    return hits / max(total, 1)


def _features_input(layouts, categories):
    """Pages -> (element features [N, MAX_SLOTS, C + 4], mask [N, MAX_SLOTS])."""
    c = len(categories)
    x = np.zeros((len(layouts), MAX_SLOTS, c + 4), np.float32)
    m = np.zeros((len(layouts), MAX_SLOTS), np.float32)
    for i, lay in enumerate(layouts):
        for j, e in enumerate([e for e in lay.elements if None not in e.box][:MAX_SLOTS]):
            x[i, j, categories.index(e.category)] = 1
            x[i, j, c:] = e.box
            m[i, j] = 1
    return x, m


def _encoder_init(rng, d_in, width=64, feat=32):
    ks = jax.random.split(rng, 4)
    dense = lambda k, a, b: {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}  # noqa: E731
    return {"e1": dense(ks[0], d_in, width), "e2": dense(ks[1], width, width), "p": dense(ks[2], 2 * width, feat),
            "o": dense(ks[3], feat, 1)}


def _encode(p, x, m):
    h = jax.nn.relu(x @ p["e1"]["w"] + p["e1"]["b"])
    h = jax.nn.relu(h @ p["e2"]["w"] + p["e2"]["b"])
    mean = (h * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1)
    mx = jnp.where(m[..., None] > 0, h, -1e9).max(1)
    mx = jnp.where(m.sum(1, keepdims=True) > 0, mx, 0.0)
    return jax.nn.relu(jnp.concatenate([mean, mx], -1) @ p["p"]["w"] + p["p"]["b"])


def _corrupt(rng, x, m, c):
    """Real pages -> corrupted ones: per page one of jitter all boxes, move / resize one element, swap categories."""
    n, s, _ = x.shape
    k1, k2, k3, k4 = jax.random.split(rng, 4)
    kind = jax.random.randint(k1, (n, 1, 1), 0, 3)
    jitter = x.at[..., c:].add(0.05 * jax.random.normal(k2, (n, s, 4)))
    one = jax.nn.one_hot(jax.random.randint(k3, (n,), 0, s), s)[..., None] * m[..., None]
    moved = x.at[..., c:].add(one * jax.random.uniform(k4, (n, s, 4), minval=-0.3, maxval=0.3))
    perm = jax.random.permutation(k4, c)
    swapped = x.at[..., :c].set(x[..., :c][..., perm])
    return jnp.where(kind == 0, jitter, jnp.where(kind == 1, moved, swapped))


def train_fid_encoder(layouts, categories, steps: int, seed: int = 0):
    """The layout-FID feature network (see the module docstring). Returns params for `_encode`."""
    from train.experiment import fit

    x, m = _features_input(layouts, categories)
    c = len(categories)
    params = _encoder_init(jax.random.key(seed), x.shape[-1])

    def loss(p, rng, _):   # the "batch" is step i's key: it draws the 64 pages and their corruption on device
        idx = jax.random.randint(rng, (64,), 0, len(x))
        xr, mr = jnp.asarray(x)[idx], jnp.asarray(m)[idx]
        xf = _corrupt(jax.random.fold_in(rng, 1), xr, mr, c)
        logit = lambda z: (_encode(p, z, mr) @ p["o"]["w"] + p["o"]["b"])[:, 0]  # noqa: E731
        return optax.sigmoid_binary_cross_entropy(logit(xr), 1.0).mean() + \
            optax.sigmoid_binary_cross_entropy(logit(xf), 0.0).mean()

    return fit(loss, params, lambda i: jax.random.key(seed + 1 + i), steps, 1e-3, jax.random.key(seed),
               name="layout-FID encoder").params


def evaluate_samples(config, model, params, workdir):
    from jaxmm.data.docsynth import Layout, parse, render_layout, serialize
    from jaxmm.data.docsynth_decode import sample_documents
    from jaxmm.diffusion.grid import save_grid
    from jaxmm.metrics.layout import frechet_distance, layout_alignment, layout_overlap, maximum_iou

    d, t, vocab = config.data, config.task_args, _vocab(config)
    real = _pages(config, "eval", d.eval_examples)
    train_pages = _pages(config, "train", d.train_examples)
    knobs = dict(max_length=d.max_length, with_text=d.with_text, temperature=t.temperature, top_k=t.top_k,
                 top_p=t.top_p, max_words=d.max_words, max_elements=d.max_elements)
    rng = jax.random.key(config.seed + 7)
    out = _perplexities(config, model, params)

    def parsed(rows):
        good = []
        for r in rows:
            try:
                good.append(parse(r, vocab, with_text=d.with_text, aspect=real[0].aspect))
            except ValueError:
                pass
        return good

    gen = parsed(sample_documents(model, params, vocab, jax.random.fold_in(rng, 0), num=t.samples, **knobs))
    raw = sample_documents(model, params, vocab, jax.random.fold_in(rng, 1), num=t.samples, constrained=False,
                           **knobs)
    cats = [[e.category for e in p.elements] for p in real[:t.samples]]
    cond = parsed(sample_documents(model, params, vocab, jax.random.fold_in(rng, 2), categories=cats, **knobs))
    out["valid_constrained"] = len(gen) / t.samples
    out["valid_unconstrained"] = len(parsed(raw)) / t.samples

    def boxes(lays):
        return [(np.array([e.box for e in p.elements]), np.array([vocab.category_id(e.category) for e in p.elements]))
                for p in lays]

    texts = {}
    for p in train_pages:
        for e in p.elements:
            if e.text:
                texts.setdefault(e.category, []).append(e.text)
    enc = train_fid_encoder(train_pages, vocab.categories, t.fid_steps)
    def feats(lays):
        return np.asarray(_encode(enc, *map(jnp.asarray, _features_input(lays, vocab.categories))))

    real_feats = feats(real)
    for name, lays in (("gen", gen), ("real", real[:t.samples])):
        out[f"{name}_alignment_x100"] = 100 * float(np.mean([layout_alignment(b) for b, _ in boxes(lays)] or [0]))
        out[f"{name}_overlap_x100"] = 100 * float(np.mean([layout_overlap(b) for b, _ in boxes(lays)] or [0]))
        out[f"{name}_coherence"] = coherence(lays, fill_from=texts, seed=config.seed)
    out["gen_fid"] = frechet_distance(feats(gen), real_feats) if len(gen) > 1 else float("nan")
    out["real_fid"] = frechet_distance(feats(_pages(config, "fid", d.eval_examples)), real_feats)
    out["cond_max_iou"] = maximum_iou(boxes(cond), boxes(real))
    out["cond_valid"] = len(cond) / len(cats)
    out["cond_alignment_x100"] = 100 * float(np.mean([layout_alignment(b) for b, _ in boxes(cond)] or [0]))
    if t.render:
        prompts = [serialize(Layout(p.elements[:1]), vocab, with_text=d.with_text)[:-1] for p in real[:t.render]]
        done = parsed(sample_documents(model, params, vocab, jax.random.fold_in(rng, 3), prompts=prompts, **knobs))
        blank = np.full_like(render_layout(real[0], width=120), 255)
        imgs = []
        for row in (gen, cond, done, real):  # one grid row each, padded with blanks
            imgs += [render_layout(p, width=120, font_size=6) for p in row[:t.render]]
            imgs += [blank] * (t.render - len(row[:t.render]))
        if imgs:
            out["samples_png"] = save_grid(np.stack(imgs), os.path.join(workdir, "samples.png"), nrow=t.render)
    return out


register("docsynth")(DocSynth)


# ------------------------------------------------------------------------------- the results table
TABLE_KEYS = (("layout_perplexity", "layout ppl ↓"), ("perplexity", "all-token ppl"),
              ("valid_unconstrained", "parse w/o mask"), ("gen_alignment_x100", "Alignment ×100 ↓"),
              ("gen_overlap_x100", "Overlap ×100 ↓"), ("gen_fid", "layout-FID ↓"),
              ("cond_max_iou", "Max-IoU (cat.-cond.) ↑"), ("gen_coherence", "coherence ↑"))


def results_table(workdirs) -> str:
    """Markdown: one row per variant (data.with_text), mean ± sd over the runs (seeds) in `workdirs`, plus the
    real held-out pages' own numbers.

        python -m train.tasks.docsynth /tmp/docsynth_text_s* /tmp/docsynth_layout_s*
    """
    import json

    rows = {}
    for w in [w for w in workdirs if os.path.isdir(w)]:
        with open(os.path.join(w, "summary.json")) as f:
            s = json.load(f)
        with open(os.path.join(w, "config.json")) as f:
            with_text = json.load(f)["data"]["with_text"]
        rows.setdefault("layout + text" if with_text else "layout only", []).append(s)
    head = "| model | seeds | " + " | ".join(label for _, label in TABLE_KEYS) + " |"
    lines = [head, "|" + "---|" * (len(TABLE_KEYS) + 2)]
    def fmt(v):
        return f"{np.mean(v):.3g} ± {np.std(v, ddof=1):.2g}" if len(v) > 1 else f"{v[0]:.3g}"

    for name in sorted(rows, reverse=True):
        runs = rows[name]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(fmt([r[k] for r in runs]) for k, _ in TABLE_KEYS)
                     + " |")
    real = next(iter(rows.values()))[0]
    ref = {"gen_alignment_x100": real["real_alignment_x100"], "gen_overlap_x100": real["real_overlap_x100"],
           "gen_fid": real["real_fid"], "gen_coherence": real["real_coherence"], "cond_max_iou": None}
    lines.append("| real held-out pages | – | – | – | – | " + " | ".join(
        "–" if ref[k] is None else f"{ref[k]:.3g}" for k, _ in TABLE_KEYS[3:]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(results_table(sys.argv[1:]))
