"""Text corpora for causal language models: token streams, windows, calibration, perplexity.

Corpora (``dataset.corpus``):

- ``stdlib`` (offline default): the source files of the running Python's standard library (its
  top-level ``*.py`` files: text every machine with Python has and nobody here wrote), sorted by
  name and split into train / validation / test *by file* with ``split_seed`` (80 / 10 / 10 %).
  Another Python version is another corpus: the digest of the texts and the tokenizer
  (:attr:`TextSplits.fingerprint`) is recorded in ``metrics.json`` and enters the cache keys.
- ``wikitext2``: WikiText-2 (raw) through ``datasets`` (``wikitext-2-raw-v1``), each split's lines
  joined with blank lines, as the LLM pruning papers evaluate (Wanda ``lib/data.py``).
- ``c4``: the first shard of C4's English training split and of its validation split (the
  shards Wanda and SparseGPT calibrate on; ``allenai/c4`` without a config name, which the
  current Hub refuses); test = validation.

Tokenizers (``dataset.tokenizer``): ``bpe`` (byte-level BPE with ``vocab_size`` entries trained by
``tokenizers`` on the training split, cached), ``byte`` (the 256 byte values and an end-of-text
token) or a Hugging Face tokenizer name (a hub model's own).

Training batches are windows of ``seq_len`` tokens at random offsets drawn from ``(seed, step)``
(resumable, like the image datasets); the loss is the next-token cross-entropy of positions 2 ..
``seq_len``. Calibration: ``calib_size`` windows of ``calib_len`` tokens at offsets drawn with
``calib_seed`` from the training split, or, with ``calib_corpus`` (e.g. ``c4`` while evaluating on
WikiText-2, as the LLM pruning papers do), crops of random documents of that corpus's training
split longer than ``calib_len`` (Wanda ``lib/data.py::get_c4``: 128 crops of 2048 tokens). Evaluation
(:meth:`TextSplits.evaluate`): the split cut into non-overlapping windows of ``seq_len`` tokens
(remainder dropped, at most ``eval_tokens`` tokens), perplexity = exp of the mean NLL over every
predicted position (the first token of a window is never predicted), as Wanda's
``lib/eval.py::eval_ppl_wikitext``; also the next-token top-1.

(Over 300 lines: the corpora, tokenizers, windows, calibration and evaluation of one dataset,
and the up-front checks of their settings, read together.)
"""

from __future__ import annotations

import math
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xxhash
from torch import nn
from torch.utils.data import Dataset

from rdprune import cache
from rdprune.data.batches import mix
from rdprune.data.splits import Splits, positive, require
from rdprune.errors import UserError

CORPORA = ("stdlib", "wikitext2", "c4")
SPLITS = ("train", "validation", "test")
EOT = "<|endoftext|>"


def stdlib_texts(split_seed: int) -> dict[str, list[str]]:
    """The standard library's top-level ``*.py`` files, split 80/10/10 by file with a seed."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if len(files) < 10:
        raise UserError(f"dataset.corpus=stdlib: only {len(files)} source files in "
                        f"{sysconfig.get_paths()['stdlib']}; use another corpus")
    order = np.random.default_rng(split_seed).permutation(len(files))
    cut = [int(0.8 * len(files)), int(0.9 * len(files))]
    parts = np.split(order, cut)
    return {s: [files[i].read_text(errors="replace") for i in sorted(p)]
            for s, p in zip(SPLITS, parts)}


def hub_texts(corpus: str) -> dict[str, list[str]]:
    """WikiText-2 or C4 through ``datasets`` (needs internet on first use, then its cache)."""
    from datasets import load_dataset

    try:
        if corpus == "wikitext2":
            data = load_dataset("wikitext", "wikitext-2-raw-v1")
            return {s: ["\n\n".join(data[s]["text"])] for s in SPLITS}
        files = {"train": "en/c4-train.00000-of-01024.json.gz",
                 "validation": "en/c4-validation.00000-of-00008.json.gz"}
        data = load_dataset("allenai/c4", data_files=files)
        return {"train": list(data["train"]["text"]),
                "validation": list(data["validation"]["text"]),
                "test": list(data["validation"]["text"])}
    except (OSError, ConnectionError, ValueError) as e:
        raise UserError(f"could not load {corpus} through datasets ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:150]}): it needs internet on first use; "
                        "offline, use dataset.corpus=stdlib") from None


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, end-of-text 256."""

    vocab_size = 257
    eot = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def bpe_tokenizer(texts: list[str], vocab_size: int, path: Path | None) -> Any:
    """A byte-level BPE trained on ``texts`` (loaded from ``path`` when it was trained before)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if path is not None and path.is_file():
        return Tokenizer.from_file(str(path))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tok.save(str(tmp))
        tmp.replace(path)
    return tok


def encode(tokenizer: Any, texts: list[str], eot: int | None) -> torch.Tensor:
    """The texts' tokens, concatenated (an end-of-text token between documents, if any)."""
    ids: list[int] = []
    for text in texts:
        out = tokenizer.encode(text)
        ids.extend(out if isinstance(out, list) else out.ids)
        if eot is not None:
            ids.append(eot)
    return torch.tensor(ids, dtype=torch.int64)


class TokenWindows(Dataset):
    """Non-overlapping windows of ``length`` tokens of a token stream: ``(window, window)``."""

    def __init__(self, tokens: torch.Tensor, length: int) -> None:
        self.tokens, self.length = tokens, length

    def __len__(self) -> int:
        return len(self.tokens) // self.length

    def __getitem__(self, i: int):
        w = self.tokens[i * self.length:(i + 1) * self.length]
        return w, w


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t + 1."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                           tokens[:, 1:].reshape(-1))


@dataclass(kw_only=True)
class TextSplits(Splits):
    """:class:`Splits` of a text corpus (see the module docstring).

    Attributes:
        tokens: the token stream of each split (``train``, ``validation``, ``test``).
        validation: the validation windows (hyperparameters are chosen there, never on test).
        seq_len: context length of training and evaluation windows.
        calib_len: tokens per calibration window.
        calib_seed: seed of the calibration windows' offsets.
        vocab_size: the tokenizer's vocabulary size (the model's output size).
        fingerprint: digest of the corpus texts and the tokenizer.
        tokenizer: the tokenizer (exported with a pruned model), None for ``byte``.
        tokenizer_name: ``bpe``, ``byte`` or the hub tokenizer's name.
    """

    task = "causal_lm"
    tokens: dict[str, torch.Tensor]
    validation: Dataset
    calib_windows: torch.Tensor | None
    seq_len: int
    calib_len: int
    calib_seed: int
    vocab_size: int
    fingerprint: str
    tokenizer: Any = None
    tokenizer_name: str = "bpe"
    _windows: torch.Tensor | None = field(default=None, init=False, repr=False)

    def calibration(self) -> torch.Tensor:
        """``[calib_size, calib_len]`` token windows at offsets drawn with ``calib_seed``."""
        if self._windows is None and self.calib_windows is not None:
            self._windows = self.calib_windows
        if self._windows is None:
            stream = self.tokens["train"]
            room = len(stream) - self.calib_len
            if room < 1:
                raise UserError(f"dataset.calib_len={self.calib_len} exceeds the training split "
                                f"({len(stream)} tokens)")
            g = torch.Generator().manual_seed(int(self.calib_seed))
            starts = torch.randint(0, room, (self.calib_size,), generator=g)
            self._windows = torch.stack([stream[s:s + self.calib_len] for s in starts.tolist()])
        return self._windows

    def train_batches(self, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
                      world: int = 1, device: torch.device | str | None = None):
        """Windows of ``seq_len`` tokens at offsets drawn from ``(seed, step)``; with ``world``
        processes, rank ``rank`` gets its contiguous share of each batch."""
        stream = self.tokens["train"].to(device)
        room = len(stream) - self.seq_len
        share = batch_size // world
        ar = torch.arange(self.seq_len, device=stream.device)
        for step in range(start, stop):
            g = torch.Generator().manual_seed(mix(seed, step, 0))
            starts = torch.randint(0, room, (batch_size,), generator=g)
            starts = starts[rank * share:(rank + 1) * share].to(stream.device)
            x = stream[starts[:, None] + ar]
            yield x, x

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lm_loss(logits, y)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, device: torch.device | str = "cpu",
                 split: str = "test") -> dict[str, float]:
        """``perplexity``, mean next-token ``nll`` and next-token ``top1`` (%) on a split."""
        was_training = model.training
        model.eval()
        nll, hits, count = 0.0, 0, 0
        try:
            for x, _ in self.loader(getattr(self, split)):
                x = x.to(device)
                logits = model(x)[:, :-1].float()
                target = x[:, 1:]
                nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             target.reshape(-1), reduction="sum"))
                hits += int((logits.argmax(-1) == target).sum())
                count += target.numel()
        finally:
            model.train(was_training)
        if not count:
            raise UserError(f"the {split} split has no window of {self.seq_len} tokens")
        return {"perplexity": math.exp(nll / count), "nll": nll / count,
                "top1": 100.0 * hits / count}


def hub_tokenizer(name: str) -> Any:
    """A Hugging Face tokenizer by name or directory (one line if it cannot be had here)."""
    from rdprune.models.hf_hub import load_error, locate

    where, local = locate(name, "dataset.tokenizer", "tokenizer_config.json")
    from transformers import AutoTokenizer  # (after the check: its import takes seconds)

    try:
        return AutoTokenizer.from_pretrained(where, local_files_only=local)
    except (OSError, ValueError) as e:
        raise load_error(name, "dataset.tokenizer", e) from None


def document_crops(texts: list[str], tokenizer: Any, n: int, length: int, seed: int
                   ) -> torch.Tensor:
    """``[n, length]``: crops of random documents longer than ``length`` tokens, as Wanda draws
    its C4 calibration (``random.seed(seed)``, a random document until one is long enough, a
    random crop of it)."""
    import random

    rng, out = random.Random(seed), []
    for _ in range(100 * n):
        if len(out) == n:
            break
        ids = encode(tokenizer, [texts[rng.randint(0, len(texts) - 1)]], None)
        if len(ids) > length:
            start = rng.randint(0, len(ids) - length - 1)
            out.append(ids[start:start + length])
    if len(out) < n:
        raise UserError(f"dataset.calib_corpus: too few documents longer than calib_len={length} "
                        "tokens")
    return torch.stack(out)


def text(
    *, name: str, corpus: str, tokenizer: str, vocab_size: int, seq_len: int, calib_size: int,
    calib_len: int, calib_seed: int, calib_corpus: str | None, eval_tokens: int, split_seed: int,
    cache_dir: str, num_workers: int, eval_batch_size: int, hub_model: str | None,
) -> TextSplits:
    """A text corpus as token windows for a causal LM (see the module docstring).

    Args:
        name: the dataset name ("text").
        corpus: ``stdlib``, ``wikitext2`` or ``c4``.
        tokenizer: ``auto`` (``hub_model``'s own tokenizer, else ``bpe``), ``bpe``, ``byte`` or
            a Hugging Face tokenizer name (or local directory).
        vocab_size: entries of the ``bpe`` tokenizer trained here (the others have their own
            size; this key is read by ``bpe`` only).
        seq_len: context length of training and evaluation windows.
        calib_size: calibration windows.
        calib_len: tokens per calibration window.
        calib_seed: seed of the calibration windows' offsets.
        calib_corpus: null (calibrate on ``corpus``'s training split) or a corpus whose
            training documents are cropped for calibration (``c4``).
        eval_tokens: at most this many tokens of the validation and test splits are evaluated.
        split_seed: seed of the by-file split of ``stdlib``.
        cache_dir: where the trained tokenizer and the token streams are kept.
        num_workers: DataLoader workers (evaluation).
        eval_batch_size: windows per evaluation forward.
        hub_model: the hub model the data is for (``model.name``), whose tokenizer ``auto``
            means; None for a model built here.
    """
    if tokenizer == "auto":
        tokenizer = hub_model or "bpe"
    require("corpus", corpus, CORPORA)
    if calib_corpus is not None:
        require("calib_corpus", calib_corpus, CORPORA)
    for key, value in (("vocab_size", vocab_size), ("seq_len", seq_len),
                       ("calib_size", calib_size), ("calib_len", calib_len),
                       ("eval_tokens", eval_tokens)):
        positive(key, value)
    texts = stdlib_texts(split_seed) if corpus == "stdlib" else hub_texts(corpus)
    h = xxhash.xxh3_128()
    for s in SPLITS:
        for t in texts[s]:
            h.update(f"{s}:{len(t)}:".encode())
            h.update(t.encode("utf-8", errors="replace"))
    digest = h.hexdigest()
    root = Path(cache_dir).expanduser() / "text"
    if tokenizer == "byte":
        tok, eot, size, tok_id = ByteTokenizer(), ByteTokenizer.eot, ByteTokenizer.vocab_size, "byte"
    elif tokenizer == "bpe":
        path = root / f"bpe-{cache.digest(digest, vocab_size)}.json"
        tok = bpe_tokenizer(texts["train"], vocab_size, path)
        eot, size, tok_id = tok.token_to_id(EOT), tok.get_vocab_size(), f"bpe{vocab_size}"
    else:
        tok = hub_tokenizer(tokenizer)  # its end-of-sequence token between documents
        eot, size, tok_id = tok.eos_token_id, len(tok), tokenizer
    fingerprint = cache.digest(digest, tok_id, calib_corpus)[:16]
    streams, _ = cache.cached(root / f"tokens-{fingerprint}.pt",
                              lambda: {s: encode(tok, texts[s], eot) for s in SPLITS})
    crops = None
    if calib_corpus is not None:
        crops, _ = cache.cached(
            root / f"calib-{cache.digest(fingerprint, calib_size, calib_len, calib_seed)}.pt",
            lambda: document_crops(hub_texts(calib_corpus)["train"] if calib_corpus != "stdlib"
                                   else stdlib_texts(split_seed)["train"], tok, calib_size,
                                   calib_len, calib_seed))
    capped = {s: streams[s][:eval_tokens] for s in ("validation", "test")}
    # every later use of the streams checked now, before a model trains on them
    for split, stream in (("train", streams["train"]), *capped.items()):
        if len(stream) < seq_len + (split == "train"):
            limit = "" if split == "train" else f" (dataset.eval_tokens={eval_tokens})"
            raise UserError(f"the {split} split has {len(stream):,} tokens{limit}, fewer than "
                            f"one window of dataset.seq_len={seq_len}")
    if calib_len > seq_len:
        raise UserError(f"dataset.calib_len={calib_len} exceeds dataset.seq_len={seq_len}, the "
                        "model's context here")
    if crops is None and len(streams["train"]) <= calib_len:
        raise UserError(f"dataset.calib_len={calib_len} exceeds the training split "
                        f"({len(streams['train']):,} tokens)")
    return TextSplits(
        name=name, train=TokenWindows(streams["train"], seq_len),
        train_eval=TokenWindows(streams["train"], seq_len),
        test=TokenWindows(capped["test"], seq_len),
        validation=TokenWindows(capped["validation"], seq_len),
        num_classes=size, input_shape=(seq_len,), calib_size=calib_size,
        num_workers=num_workers, eval_batch_size=eval_batch_size, tokens=streams,
        seq_len=seq_len, calib_len=calib_len, calib_seed=calib_seed, vocab_size=size,
        fingerprint=fingerprint, calib_windows=crops,
        tokenizer=None if isinstance(tok, ByteTokenizer) else tok, tokenizer_name=tokenizer,
    )
