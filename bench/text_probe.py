"""Frozen-feature probes for the pydoc package task (issue 13 diagnosis).

For a pretraining checkpoint (causal or masked LM) and a random backbone of the same
architecture, pool the token features of every docstring (last real token, first token,
mean over real tokens; final output and each block's output), fit scikit-learn's
multinomial logistic regression on the labelled subset (C picked on val/acc) and report
val/test accuracy and macro F1. Also a TF-IDF bag-of-words baseline and the label shares.

    PYTHONPATH=src python bench/text_probe.py --ckpt outputs/diag/gpt3 --fractions 0.1 1.0

It builds the same splits, tokenizer and framing (<eos> text <eos>, max_length tokens) as
experiment=pydoc_package_classifier with model.pretrained=<ckpt>.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler
from tokenizers import Tokenizer

from ptft.data.images import label_subset
from ptft.data.pydoc_corpus import build_corpus, package_task
from ptft.data.pydoc_tasks import frame_text, pad
from ptft.data.tokenizer import PTFT_SPECIALS
from ptft.runs.load import load_run

CS = (0.1, 1.0, 10.0)


def fit_probe(xtr, ytr, xs, ys):
    """Logistic regression, C chosen on val/acc; returns (C, val acc, test acc, val f1, test f1)."""
    scaler = StandardScaler().fit(xtr)
    xtr, xv, xt = (scaler.transform(a) for a in (xtr, xs["val"], xs["test"]))
    best = None
    for c in CS:
        clf = LogisticRegression(C=c, max_iter=500).fit(xtr, ytr)
        pv, pt = clf.predict(xv), clf.predict(xt)
        row = (
            c,
            (pv == ys["val"]).mean(),
            (pt == ys["test"]).mean(),
            f1_score(ys["val"], pv, average="macro"),
            f1_score(ys["test"], pt, average="macro"),
        )
        if best is None or row[1] > best[1]:
            best = row
    return best


@torch.no_grad()
def features(backbone, ids, pad_id, batch=128):
    """{(layer, pooling): (N, dim)} for layer in 0..L (L = final, after the last norm)."""
    outs: dict = {}
    hooks, taps = [], []
    for block in backbone.blocks:
        hooks.append(block.register_forward_hook(lambda m, i, o: taps.append(o[0])))
    for start in range(0, len(ids), batch):
        tokens = pad(ids[start : start + batch], pad_id)
        real = (tokens != pad_id).float().unsqueeze(-1)
        last = real.squeeze(-1).sum(1).long() - 1
        taps.clear()
        final = backbone(tokens)
        layers = [*taps[:-1], final]  # block outputs 1..L-1, then the final normed output
        for li, h in enumerate(layers, start=1):
            pooled = {
                "last": h[torch.arange(len(h)), last],
                "mean": (h * real).sum(1) / real.sum(1),
            }
            for name, v in pooled.items():
                outs.setdefault((li, name), []).append(v.numpy())
    for hk in hooks:
        hk.remove()
    return {k: np.concatenate(v) for k, v in outs.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", action="append", default=[], help="run dir or .ckpt (repeatable)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--random", action="store_true", help="also a random backbone")
    p.add_argument("--layers", default="last", help="'last' or 'all'")
    args = p.parse_args()

    corpus = build_corpus(Path("data/pydoc"), seed=0, val_fraction=0.05, test_fraction=0.05)
    examples, labels = package_task(corpus, 10)
    ys = {s: np.array([y for _, y in examples[s]]) for s in examples}
    for s in ("train", "val", "test"):
        share = np.bincount(ys[s], minlength=10) / len(ys[s])
        print(f"{s}: n={len(ys[s])} largest class {labels[share.argmax()]} {share.max():.3f}")
    subsets = {f: label_subset(ys["train"], f, args.seed) for f in args.fractions}

    # bag of words (TF-IDF, word 1-2 grams): what surface features reach
    texts = {s: [t for t, _ in examples[s]] for s in examples}
    for f, keep in subsets.items():
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
        xtr = vec.fit_transform([texts["train"][i] for i in keep])
        xs = {s: vec.transform(texts[s]) for s in ("val", "test")}
        best = None
        for c in (1.0, 10.0, 100.0):
            clf = LogisticRegression(C=c, max_iter=3000).fit(xtr, ys["train"][keep])
            pv, pt = clf.predict(xs["val"]), clf.predict(xs["test"])
            row = (
                c,
                (pv == ys["val"]).mean(),
                (pt == ys["test"]).mean(),
                f1_score(ys["val"], pv, average="macro"),
                f1_score(ys["test"], pt, average="macro"),
            )
            best = row if best is None or row[1] > best[1] else best
        print(
            f"tfidf fraction={f} C={best[0]} val/acc={best[1]:.3f} test/acc={best[2]:.3f} "
            f"val/f1={best[3]:.3f} test/f1={best[4]:.3f}"
        )

    sources = [(c, None) for c in args.ckpt]
    if args.random:
        sources.append((args.ckpt[0], "random"))
    for ckpt, kind in sources:
        t0 = time.time()
        module, record = load_run(ckpt)
        backbone = module.backbone.eval()
        if kind == "random":
            torch.manual_seed(args.seed)
            backbone.reset_parameters()
        tokenizer = Tokenizer.from_str(record["tokenizer"])
        ids = {
            s: [frame_text(tokenizer, t, args.max_length, PTFT_SPECIALS) for t in texts[s]]
            for s in texts
        }
        feats = {s: features(backbone, ids[s], PTFT_SPECIALS.pad_id) for s in ids}
        name = f"{ckpt} {kind or 'pretrained'} causal={backbone.causal}"
        keys = sorted(feats["train"])
        if args.layers == "last":
            keys = [k for k in keys if k[0] == backbone.num_layers]
        for f, keep in subsets.items():
            for key in keys:
                xs = {s: feats[s][key] for s in ("val", "test")}
                c, va, ta, vf, tf = fit_probe(feats["train"][key][keep], ys["train"][keep], xs, ys)
                print(
                    f"{name} fraction={f} layer={key[0]} pool={key[1]} C={c} val/acc={va:.3f} "
                    f"test/acc={ta:.3f} val/f1={vf:.3f} test/f1={tf:.3f}"
                )
        print(f"{name}: {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
