"""Theory figures, registered with paper_figs.py: computations (-> results dict) and plots.

``theorem1_convergence``
    |(dtheta_S . dtheta_T)/eps - A| / A against eps, per loss family, on random smooth MLPs:
    Lemma 1 says the error is O(eps) (slope 1 in log-log).
``theorem1_shared_vs_different_init``
    cos(dtheta_S, dtheta_T) over many random networks and input distributions, for a
    student that shares the teacher's init, one with an independent init, and ones whose
    init is theta0 + sigma * std * noise.
``theorem1_demo``
    the two-parameter teaching demo of :mod:`theory.demo`.

All computations run in float64 and record their seeds and configuration.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from harness.figures import Figure
from theory import demo
from theory.contrast import perturbed_init
from theory.core import projection, teacher_direction
from theory.losses import mse, softmax_ce, softmax_kl, weighted_mse
from theory.nets import mlp

LOSS_FAMILIES = {
    "MSE": lambda k: mse(),
    "weighted MSE": lambda k: weighted_mse(np.linspace(0.5, 2.0, k)),
    "softmax CE (all logits)": lambda k: softmax_ce(),
    "KL (logit subset)": lambda k: softmax_kl(range(k // 2, k)),
}
INPUTS = ("uniform", "gaussian", "low-rank", "large-scale")


def _inputs(kind: str, rng: np.random.Generator, n: int, d: int) -> jax.Array:
    if kind == "uniform":
        x = rng.uniform(-1, 1, (n, d))
    elif kind == "gaussian":
        x = rng.normal(size=(n, d))
    elif kind == "low-rank":
        x = rng.normal(size=(n, 2)) @ rng.normal(size=(2, d))
    else:
        x = 10 * rng.normal(size=(n, d))
    return jnp.asarray(x)


def _teacher(f, params0, rng, d_in: int, k: int):
    """``dtheta_T = -grad L_T(theta0)``, L_T = cross-entropy on the teacher's own random task."""
    x_t = jnp.asarray(rng.normal(size=(32, d_in)))
    y_t = jnp.asarray(rng.integers(0, k, 32))

    def loss_T(p):
        logp = jax.nn.log_softmax(f(p, x_t), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y_t[:, None], axis=-1))

    return teacher_direction(loss_T, params0)


def compute_convergence(quick: bool) -> dict:
    """Relative first-order error for each loss family on ``n_nets`` random MLPs per family."""
    cfg = {"seed": 0, "n_nets": 3 if quick else 8, "eps": np.logspace(-7, 0, 8 if quick else 22).tolist(),
           "sizes": [6, 16, 16, 6], "activations": ["tanh", "gelu", "softplus"], "n_inputs": 64, "dtype": "float64"}
    out = {"config": cfg, "families": {}}
    with jax.enable_x64(True):
        for fam_i, (name, make_loss) in enumerate(LOSS_FAMILIES.items()):
            rows = []
            for j in range(cfg["n_nets"]):
                seed = 1000 * fam_i + j
                rng = np.random.default_rng(seed)
                act = cfg["activations"][j % len(cfg["activations"])]
                f, p0 = mlp(seed, cfg["sizes"], act, dtype=jnp.float64)
                d_t = _teacher(f, p0, rng, cfg["sizes"][0], cfg["sizes"][-1])
                x = _inputs(INPUTS[j % len(INPUTS)], rng, cfg["n_inputs"], cfg["sizes"][0])
                loss = make_loss(cfg["sizes"][-1])
                errs = []
                for eps in cfg["eps"]:
                    pr = projection(f, p0, d_t, eps, x, loss)
                    errs.append(abs(float(pr.ratio) - 1.0))
                rows.append({"seed": seed, "activation": act, "inputs": INPUTS[j % len(INPUTS)],
                             "A": float(pr.A), "rel_error": errs})
            out["families"][name] = rows
    return out


def plot_convergence(results: dict, ax) -> None:
    eps = np.asarray(results["config"]["eps"])
    for (name, rows), color in zip(results["families"].items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        errs = np.asarray([r["rel_error"] for r in rows])
        for e in errs:
            ax.loglog(eps, np.maximum(e, 1e-17), color=color, alpha=0.25, lw=0.8)
        ax.loglog(eps, np.maximum(np.median(errs, 0), 1e-17), color=color, lw=2, label=f"{name} (median of {len(rows)})")
    ref = eps * np.median([np.median(np.asarray([r["rel_error"] for r in rows])[:, len(eps) // 2] / eps[len(eps) // 2])
                           for rows in results["families"].values()])
    ax.loglog(eps, ref, "k--", lw=1, label="slope 1 (O(eps))")
    ax.set_xlabel("teacher step size eps")
    ax.set_ylabel("|(dθ_S·dθ_T)/eps − A| / A")
    ax.set_title("Lemma 1: the student's projection is eps·A + O(eps²)\n"
                 f"(A: the first-order coefficient; thin: each of {len(rows)} random MLPs per loss, thick: their median)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="major", alpha=0.3)


def compute_init_contrast(quick: bool) -> dict:
    """cos(dtheta_S, dtheta_T) at eps = 1e-3 over random networks, for several student inits."""
    cfg = {"seed": 0, "n_draws": 40 if quick else 300, "eps": 1e-3, "sigmas": [1e-4, 1e-3, 1e-2, 1e-1, 1.0],
           "widths": [8, 16, 32], "depths": [1, 2, 3], "activations": ["relu", "tanh", "gelu", "softplus"],
           "inputs": list(INPUTS), "losses": list(LOSS_FAMILIES), "d_in": 5, "d_out": 6, "n_inputs": 32,
           "dtype": "float64"}
    conditions = ["shared init"] + [f"σ = {s:g}" for s in cfg["sigmas"]] + ["independent init"]
    cos = {c: [] for c in conditions}
    draws = []
    with jax.enable_x64(True):
        for i in range(cfg["n_draws"]):
            rng = np.random.default_rng(cfg["seed"] + i)
            depth, width = int(rng.choice(cfg["depths"])), int(rng.choice(cfg["widths"]))
            act, kind = str(rng.choice(cfg["activations"])), str(rng.choice(cfg["inputs"]))
            loss_name = str(rng.choice(cfg["losses"]))
            sizes = [cfg["d_in"]] + [width] * depth + [cfg["d_out"]]
            f, p0 = mlp(2 * i, sizes, act, dtype=jnp.float64)
            d_t = _teacher(f, p0, rng, cfg["d_in"], cfg["d_out"])
            x = _inputs(kind, rng, cfg["n_inputs"], cfg["d_in"])
            loss = LOSS_FAMILIES[loss_name](cfg["d_out"])
            inits = [p0] + [perturbed_init(p0, s, jax.random.key(i)) for s in cfg["sigmas"]]
            inits.append(mlp(2 * i + 1, sizes, act, dtype=jnp.float64)[1])
            for c, init in zip(conditions, inits):
                cos[c].append(float(projection(f, p0, d_t, cfg["eps"], x, loss, student_init=init).cosine))
            draws.append({"draw": i, "sizes": sizes, "activation": act, "inputs": kind, "loss": loss_name})
    summary = {c: {"frac_positive": float(np.mean(np.asarray(v) > 0)), "median": float(np.median(v))}
               for c, v in cos.items()}
    return {"config": cfg, "conditions": conditions, "cosine": cos, "summary": summary, "draws": draws}


def plot_init_contrast(results: dict, ax) -> None:
    conds = results["conditions"]
    data = [np.asarray(results["cosine"][c]) for c in conds]
    ax.violinplot(data, showmedians=True)
    for i, d in enumerate(data, start=1):
        jitter = np.random.default_rng(i).uniform(-0.12, 0.12, d.size)  # display jitter only
        ax.scatter(i + jitter, d, s=3, color="k", alpha=0.3)
        ax.text(i, 1.04, f"{100 * np.mean(d > 0):.0f}% > 0", ha="center", fontsize=7)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(1, len(conds) + 1), conds, fontsize=8)
    ax.set_ylim(-1.05, 1.12)
    ax.set_ylabel("cos(dθ_S, dθ_T)")
    ax.set_xlabel("student's initialisation (σ: θ0 + σ · std(layer) · N(0, I))")
    ax.set_title(f"Student's first step vs teacher's step, {len(data[0])} random networks (eps = "
                 f"{results['config']['eps']:g})\ndots: networks; violins: their density; bars: min, median, max; "
                 "top: share with cos > 0", fontsize=9)


FIGURES = [  # minutes: measured on 2 CPU cores (full, quick)
    Figure("theorem1_convergence", compute_convergence, plot_convergence, minutes=(0.4, 0.2)),
    Figure("theorem1_shared_vs_different_init", compute_init_contrast, plot_init_contrast, (7.5, 4.4),
           minutes=(3.6, 0.5)),
    Figure("theorem1_demo", demo.compute, demo.plot, (6.4, 5.6), minutes=(0.1, 0.1)),
]
