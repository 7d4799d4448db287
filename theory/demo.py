"""Teaching demo: Theorem 1 in a two-parameter network you can see.

The network has one hidden unit and two outputs, like the MNIST experiment's digit and
auxiliary logits::

    h = tanh(a x),   y_trait = b h,   y_aux = h          params theta = (a, b)

The teacher learns a "trait" task on its own data (L_T = squared error of y_trait to
2 tanh(x) on x ~ N(1, 0.3^2)), stepping theta0 -> theta0 + eps dtheta_T. The student sees
only y_aux, and only on unrelated inputs (x uniform on [-2, 2]); it never sees y_trait or
the teacher's data. Its imitation step still points into the half-plane of the teacher's
step (dtheta_S . dtheta_T = eps A + O(eps^2) > 0), so L_T drops - unless the student starts
from a different initialisation, where the same imitation pulls it the other way.

Run ``python -m theory.demo`` to print the numbers (a second on 2 CPU cores after JAX starts);
``--out demo.png`` also draws the picture (``python paper_figs.py --only theorem1_demo`` draws it into
figures/).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import theory

THETA0 = (0.3, 0.5)          # shared initialisation (a, b)
THETA0_OTHER = (1.6, 0.5)    # a different initialisation for the contrast
EPS = 0.25


def f(params, x):
    """``[batch] -> [batch, 2]``: (trait output, aux output) of the one-unit network."""
    import jax.numpy as jnp  # JAX is imported on first use, so --help answers at once

    h = jnp.tanh(params["a"] * x)
    return jnp.stack([params["b"] * h, h], axis=-1)


def _teacher_data():
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x_t = jnp.asarray(rng.normal(1.0, 0.3, 64))
    return x_t, 2.0 * jnp.tanh(x_t)


def loss_T(params):
    """The teacher's trait loss: mean squared error of y_trait on the teacher's data."""
    import jax.numpy as jnp

    x_t, y_t = _teacher_data()
    return jnp.mean((f(params, x_t)[:, 0] - y_t) ** 2)


def compute(quick: bool = False) -> dict:
    """Every number the picture shows, in float64, with the configuration that produced them."""
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        p0 = {"a": jnp.float64(THETA0[0]), "b": jnp.float64(THETA0[1])}
        p_other = {"a": jnp.float64(THETA0_OTHER[0]), "b": jnp.float64(THETA0_OTHER[1])}
        x_s = jnp.linspace(-2.0, 2.0, 101)            # the student's unrelated inputs
        aux = theory.mse([1])                          # imitate the aux output only
        d_t = theory.teacher_direction(loss_T, p0)
        p_t = theory.teacher_params(p0, d_t, EPS)
        out = {"config": {"theta0": THETA0, "theta0_other": THETA0_OTHER, "eps": EPS, "student_inputs":
                          "101 points on [-2, 2]", "teacher_data": "64 points ~ N(1, 0.3^2), seed 0",
                          "student_loss": "mse on aux output", "steps": 60 if quick else 300, "lr": 0.2},
               "teacher_step": [float(EPS * d_t["a"]), float(EPS * d_t["b"])], "L_T0": float(loss_T(p0))}
        for name, init in (("shared", p0), ("different", p_other)):
            pr = theory.projection(f, p0, d_t, EPS, x_s, aux, student_init=init)
            d_s = theory.student_update(f, init, p_t, x_s, aux)
            traj, p = [], init
            for _ in range(out["config"]["steps"]):
                traj.append([float(p["a"]), float(p["b"])])
                p = theory.teacher_params(p, theory.student_update(f, p, p_t, x_s, aux), out["config"]["lr"])
            out[name] = {"init": [float(init["a"]), float(init["b"])], "student_step": [float(d_s["a"]),
                         float(d_s["b"])], "inner": float(pr.inner), "cosine": float(pr.cosine),
                         "eps_A": float(EPS * pr.A), "L_T_init": float(loss_T(init)),
                         "L_T_after_small_step": float(loss_T(theory.teacher_params(init, d_s, 1e-2))),
                         "L_T_end": float(loss_T(p)), "trajectory": traj}
        a_grid, b_grid = np.linspace(-0.2, 2.0, 89), np.linspace(-0.2, 2.6, 113)
        grid = jax.vmap(jax.vmap(lambda a, b: loss_T({"a": a, "b": b}), (0, None)), (None, 0))(
            jnp.asarray(a_grid), jnp.asarray(b_grid))
        out["contours"] = {"a": a_grid.tolist(), "b": b_grid.tolist(), "L_T": np.asarray(grid).tolist()}
    return out


def plot(results: dict, ax) -> None:
    c = results["contours"]
    log_l = np.log10(np.asarray(c["L_T"]))
    levels = np.unique(np.round(np.quantile(log_l, np.linspace(0.02, 0.98, 16)), 2))
    ax.contourf(c["a"], c["b"], log_l, levels=levels, cmap="Greys", alpha=0.35)
    cs = ax.contour(c["a"], c["b"], log_l, levels=levels, colors="grey", linewidths=0.6)
    ax.clabel(cs, cs.levels[::2], fontsize=6, fmt="%.2f")  # every other level: the labels crowd where L_T is steep
    t = np.asarray(results["teacher_step"])
    scale = np.linalg.norm(t)
    p0 = np.asarray(results["shared"]["init"])
    ax.annotate("", p0 + t, p0, arrowprops={"arrowstyle": "->", "color": "C3", "lw": 2})
    ax.text(*(p0 + t + [0.03, 0.03]), "teacher step ε·dθ_T", color="C3", fontsize=8)
    for name, color in (("shared", "C0"), ("different", "C1")):
        r = results[name]
        start, step = np.asarray(r["init"]), np.asarray(r["student_step"])
        arrow = step / np.linalg.norm(step) * scale
        ax.annotate("", start + arrow, start, arrowprops={"arrowstyle": "->", "color": color, "lw": 2})
        traj = np.asarray(r["trajectory"])
        ax.plot(traj[:, 0], traj[:, 1], ":", color=color, lw=1)
        ax.plot(*start, "o", color=color,
                label=f"{name} init: dθ_S·dθ_T = {r['inner']:+.2e}, cos = {r['cosine']:+.2f}, "
                      f"L_T {r['L_T_init']:.2f} → {r['L_T_end']:.2f}")
    ax.set_xlabel("a (hidden weight, shared by both outputs)")
    ax.set_ylabel("b (trait-output weight)")
    ax.set_title("Student imitates only y_aux = tanh(a·x) on unrelated x;\n"
                 "contours: log10 L_T (teacher's trait loss); arrows: first steps (student rescaled); dotted: "
                 f"{results['config']['steps']} steps", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m theory.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="also draw the picture into FILE (.png, .pdf ...; default: print the numbers only, so "
                             "nothing is written into the folder you run it from)")
    args = parser.parse_args(argv)
    from harness.results import OutputError, prepare_output

    if args.out is not None:
        try:
            prepare_output(args.out)
        except OutputError as err:
            print(f"theory.demo: error: {err}", file=sys.stderr)
            return 2
    r = compute()
    print(f"teacher step eps*dtheta_T = (da, db) = ({r['teacher_step'][0]:+.4f}, {r['teacher_step'][1]:+.4f}); "
          f"L_T(theta0) = {r['L_T0']:.4f}")
    for name in ("shared", "different"):
        s = r[name]
        print(f"{name:>9} init {tuple(round(v, 3) for v in s['init'])}: student step (da, db) = "
              f"({s['student_step'][0]:+.3e}, {s['student_step'][1]:+.3e})  dS.dT = {s['inner']:+.3e} "
              f"(eps*A = {s['eps_A']:.3e})  cos = {s['cosine']:+.3f}  "
              f"L_T: {s['L_T_init']:.4f} -> {s['L_T_after_small_step']:.4f} (one small step) -> "
              f"{s['L_T_end']:.4f} ({r['config']['steps']} steps)")
    if args.out is None:
        print("theory.demo: add --out demo.png to draw the picture")
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    plot(r, ax)
    out = prepare_output(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, bbox_inches="tight")
    print(f"theory.demo: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
