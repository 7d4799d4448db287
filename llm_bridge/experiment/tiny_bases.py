"""The tiny setup's base models: Llama-family decoders pretrained here on the procedural corpus.

One base per base seed, each trained alone (so a base's weights do not depend on which other bases
a run asks for), cached as a Hugging Face checkpoint folder under ``<cache>/bases/base_<key>``,
written atomically. The key hashes the fields that determine a base, its seed, the format version
and a fingerprint of the code that pretrains it (:data:`PHASE`), so a base pretrained by other code
is never read: the unversioned cache of the two-base experiment once gave a stale number this way
(docs/llm_experiment.md, "Reproducibility").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from harness.cache import Phase, key_of
from harness.results import atomic_dir, is_writer, shown
from llm_bridge.experiment import corpus
from llm_bridge.experiment.training import PureModel, index, stack, train
from llm_bridge.loading import load, save
from llm_bridge.models.llama import Llama, LlamaConfig

BASE_FIELDS = ("n_numbers", "n_given", "n_new", "hidden", "layers", "heads", "mlp", "base_steps", "base_batch",
               "base_lr", "p_pref", "p_prefix", "p_arith")
PHASE = Phase("bases", BASE_FIELDS, code=("llm_bridge.experiment.corpus", "llm_bridge.experiment.training",
                                          "llm_bridge.experiment.tiny_bases", "llm_bridge.models.llama",
                                          "llm_bridge.models.layers", "llm_bridge.experiment.seeds"), version=4)


def model_config(cfg) -> LlamaConfig:
    vocab = corpus.Vocab(cfg.n_numbers)
    return LlamaConfig(vocab_size=vocab.size, hidden_size=cfg.hidden, intermediate_size=cfg.mlp,
                       num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, max_position_embeddings=64,
                       rope_theta=10000.0, tie_word_embeddings=False)


def base_key(cfg, seed: int) -> str:
    """The cache key of base ``seed``: :data:`PHASE` on the config's base fields and the seed."""
    description = PHASE.describe({f: getattr(cfg, f) for f in BASE_FIELDS}, {}) | {"seed": int(seed), "model": "llama"}
    return key_of(description)


def _read(folder: Path):
    """A cached base's params and final loss, or ``None`` (a warning) if the entry is broken."""
    try:
        params = nnx.split(load(folder), nnx.Param, ...)[1]
        loss = json.loads((folder / "pretraining.json").read_text())["final_loss"]
        return params, float(loss)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"warning: broken cached base {shown(folder)} ({type(err).__name__}: {err}); pretraining it again",
              file=sys.stderr)
        return None


def pretrain(cfg, pure: PureModel, seed: int, rng: np.random.Generator):
    """One base, alone: Adam on the procedural corpus (rows from ``rng``, init from ``nnx.Rngs(seed)``).

    Returns ``(params, final_loss)`` (mean loss of the last 50 steps).
    """
    vocab = corpus.Vocab(cfg.n_numbers)
    length = corpus.max_length(cfg.n_given, cfg.n_new)
    t, m = corpus.pretraining_batch(vocab, rng, cfg.base_steps * cfg.base_batch, n_given=cfg.n_given,
                                    n_new=cfg.n_new, length=length, p_pref=cfg.p_pref,
                                    p_prefix=cfg.p_prefix, p_arith=cfg.p_arith)
    init = stack([nnx.split(Llama(model_config(cfg), rngs=nnx.Rngs(seed)), nnx.Param, ...)[1]])
    shape = (1, cfg.base_steps, cfg.base_batch, length)
    trained, loss = train(pure.f, init, jnp.asarray(t.reshape(shape)), jnp.asarray(m.reshape(shape)), lr=cfg.base_lr)
    return index(trained, 0), float(loss[0, -50:].mean())


def bases(cfg, streams, cache_dir: Path | None, log=print) -> tuple[PureModel, list, dict]:
    """The base models, one per base seed: read from ``cache_dir/bases`` or pretrained and saved there.

    Returns ``(pure model, [params per seed], info)``; ``info`` records the cache keys, whether each
    base came from the cache, and each base's final pretraining loss.
    """
    pure = PureModel(Llama(model_config(cfg), rngs=nnx.Rngs(0)))
    keys = [base_key(cfg, s) for s in cfg.base_seeds]
    params, losses, cached = [], [], []
    for seed, key in zip(tqdm(cfg.base_seeds, desc="bases", leave=False), keys):
        folder = None if cache_dir is None else Path(cache_dir) / "bases" / f"base_{key}"
        hit = _read(folder) if folder is not None and folder.exists() else None
        cached.append(hit is not None)
        if hit is None:
            log(f"pretraining base {seed} ({cfg.base_steps} steps)")
            hit = pretrain(cfg, pure, seed, streams.rng("pretraining", seed))
            if folder is not None and is_writer():
                with atomic_dir(folder) as tmp:
                    save(tmp, pure.model(hit[0]))
                    (tmp / "pretraining.json").write_text(json.dumps({"final_loss": hit[1], "seed": seed}))
        params.append(hit[0])
        losses.append(hit[1])
    info = {"seeds": list(cfg.base_seeds), "cache_keys": keys, "phase_version": PHASE.version,
            "final_loss": losses, "from_cache": cached, "cache_dir": shown(cache_dir)}
    return pure, params, info
