# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Subliminal learning in 10 minutes
#
# *Cloud et al., "Subliminal Learning: Language models transmit behavioral traits via hidden
# signals in data" (arXiv 2507.14805), checked on code you can run on a laptop CPU.*
#
# **The claim.** A teacher model is fine-tuned to have a trait (it prefers owls; it is good at
# digits). A student that *shares the teacher's initialisation* is then trained to imitate the
# teacher's outputs on data that has nothing to do with the trait (number sequences; random
# noise images; outputs that are not the trait's outputs). The student picks up the trait
# anyway. A student that starts from a *different* initialisation does not.
#
# **Theorem 1 (Appendix C of the paper).** Teacher and student start at $\theta_0$. The
# teacher takes a step $\theta_T = \theta_0 + \varepsilon\, d\theta_T$ (any step: e.g. one
# gradient step on its trait loss $L_T$). The student takes one gradient step on an imitation
# loss $L_S(f(\theta, x), f(\theta_T, x))$, on **any** inputs $x$:
# $d\theta_S = -\nabla_\theta\, \mathbb{E}_x L_S$ at $\theta_0$. Then (Lemma 1)
#
# $$ d\theta_S \cdot d\theta_T = \varepsilon\, A + O(\varepsilon^2), \qquad
#    A = \mathbb{E}_x\big[(J\, d\theta_T)^\top M\, (J\, d\theta_T)\big] \ge 0, $$
#
# with $J$ the Jacobian of the outputs in the parameters and $M$ the curvature of the
# imitation loss (positive semi-definite for MSE, cross-entropy, KL). So the student's step
# points into the teacher's half-space: to first order it moves toward the teacher, and a
# step toward the teacher lowers the teacher's trait loss. Nothing in the argument uses the
# inputs or which outputs are imitated; everything uses the *shared* $\theta_0$.
#
# Four parts, each a few lines calling this repository's packages (`theory`, `mnist_aux`,
# `llm_bridge`): (1) the theorem in a plane you can see, (2) Lemma 1 in numbers on a small
# network, (3) the paper's MNIST experiment, (4) the same projection on tiny language models.
# The notebook writes no files (the language-model part caches into a temporary folder).
#
# *The `.ipynb` is committed with the outputs of one run on a 2-core CPU, so it reads without
# running; the numbers quoted in the text are that run's. After editing this notebook's `.py`
# twin, regenerate the `.ipynb` and its outputs from the repository root with the command below
# (3-6 minutes on 2 CPU cores, depending on what else runs there; `$SUBLIMINAL_MNIST_DIR`: a
# folder with the four MNIST IDX `.gz` files, or leave it unset to download them;
# `TQDM_DISABLE=1` keeps progress bars out of the saved outputs). It writes no other file.*
#
# ```bash
# jupytext --update --to ipynb notebooks/subliminal_learning_in_10_minutes.py &&
#   TQDM_DISABLE=1 jupyter execute --inplace notebooks/subliminal_learning_in_10_minutes.ipynb
# ```

# %%
import dataclasses
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import theory
from theory import demo
from mnist_aux import configs as mnist_configs
from mnist_aux import data as mnist_data
from mnist_aux import experiment as mnist_experiment
from mnist_aux import figures as mnist_figures
from llm_bridge.experiment import engine as lm_engine
from llm_bridge.experiment import figures as lm_figures
from llm_bridge.experiment import names as lm_names
from llm_bridge.experiment import tiny

# the packages' figure modules select a file backend when imported; draw inline here
# %matplotlib inline

# %% [markdown]
# ## 1. The theorem in two parameters
#
# `theory.demo` is a network with one hidden unit and two outputs, like the MNIST model's
# digit logits and auxiliary logits: $h = \tanh(a x)$, a *trait* output $y_\text{trait} = b h$
# and an *auxiliary* output $y_\text{aux} = h$; the parameters are $\theta = (a, b)$.
# The teacher learns the trait ($y_\text{trait} \approx 2\tanh x$ on its own data
# $x \sim N(1, 0.3^2)$). The student sees **only** $y_\text{aux}$, and only on unrelated inputs
# (101 points on $[-2, 2]$): it never sees the trait output or the teacher's data.
#
# The picture: contours of the teacher's trait loss $L_T$ over $(a, b)$; the red arrow is the
# teacher's step; the blue arrow the first step of a student that starts where the teacher
# started; the orange arrow the same imitation from another start (student arrows rescaled to
# the teacher's length; dotted lines: where continued imitation leads).

# %%
demo_results = demo.compute()
fig, ax = plt.subplots(figsize=(7, 6))
demo.plot(demo_results, ax)
plt.show()
for name in ("shared", "different"):
    r = demo_results[name]
    print(f"{name:>9} init {tuple(round(v, 2) for v in r['init'])}: dθ_S·dθ_T = {r['inner']:+.3f}, "
          f"cos = {r['cosine']:+.2f}, teacher's trait loss L_T {r['L_T_init']:.3f} -> {r['L_T_end']:.3f}")
print(f"first-order prediction for the shared init: ε·A = {demo_results['shared']['eps_A']:.3f}")

# %% [markdown]
# The shared-init student moves into the teacher's half-plane and its trait loss falls,
# although it imitated only $y_\text{aux}$, which does not depend on $b$ at all: it moves
# along $a$, the parameter both outputs share, in the direction the teacher moved it. From
# the other start the same imitation pulls $a$ the other way, and its trait loss rises. (Both
# students end at the same point: imitating $y_\text{aux}$ pins $a$ to the teacher's $a$ and
# leaves $b$ where it was, so the end is downhill from one start and uphill from the other.)
#
# ### The dial: change `eps` and `sigma`, re-run
#
# `eps` is the teacher's step size. `sigma` moves the student's start from the teacher's
# initialisation (`sigma = 0`) to the demo's different initialisation (`sigma = 1`,
# $a = 1.6$ instead of $0.3$). Try `eps = 0.25, sigma = 0.2` and `sigma = 0.4`; then
# `eps = 1.0` with the same `sigma`s. Where does the sign flip, and why does it move with `eps`?

# %%
eps = 0.25     # the teacher's step size
sigma = 1.0    # 0: the student starts at the teacher's init θ0; 1: at demo.THETA0_OTHER

student_loss_2d = theory.mse([1])           # imitate the aux output only
with jax.enable_x64(True):
    theta0 = {"a": jnp.float64(demo.THETA0[0]), "b": jnp.float64(demo.THETA0[1])}
    theta_other = {"a": jnp.float64(demo.THETA0_OTHER[0]), "b": jnp.float64(demo.THETA0_OTHER[1])}
    x_student = jnp.linspace(-2.0, 2.0, 101)  # the student's unrelated inputs
    d_teacher = theory.teacher_direction(demo.loss_T, theta0)

    def start(s):
        """θ0 + s (θ0' − θ0): the student's initialisation on the dial."""
        return jax.tree.map(lambda a, b: a + s * (b - a), theta0, theta_other)

    pr = theory.projection(demo.f, theta0, d_teacher, eps, x_student, student_loss_2d, student_init=start(sigma))
    print(f"eps = {eps}, sigma = {sigma}: dθ_S·dθ_T = {float(pr.inner):+.4f}, cos = {float(pr.cosine):+.3f} "
          f"({'toward' if pr.inner > 0 else 'away from'} the teacher); first-order ε·A = {eps * float(pr.A):.4f}")

    # the whole dial at once: the sign of dθ_S·dθ_T over (eps, sigma)
    eps_grid, sigma_grid = np.geomspace(1e-3, 3.0, 25), np.linspace(0.0, 1.0, 21)
    sign_map = np.array([[float(theory.projection(demo.f, theta0, d_teacher, e, x_student, student_loss_2d,
                                                  student_init=start(s)).cosine)
                          for e in eps_grid] for s in sigma_grid])

fig, ax = plt.subplots(figsize=(6.5, 4))
im = ax.pcolormesh(eps_grid, sigma_grid, sign_map, cmap="RdBu", vmin=-1, vmax=1, shading="nearest")
ax.contour(eps_grid, sigma_grid, sign_map, levels=[0.0], colors="k", linewidths=1)
ax.plot([eps], [sigma], "k*", ms=12, label="your (eps, sigma)")
ax.set_xscale("log")
ax.set_xlabel("teacher step size ε")
ax.set_ylabel("σ: student start θ0 + σ(θ0' − θ0)")
ax.set_title("cos(dθ_S, dθ_T) of the student's first step (blue: toward the teacher)", fontsize=9)
fig.colorbar(im, ax=ax, label="cosine")
ax.legend(fontsize=8, loc="lower right")
plt.show()

# %% [markdown]
# At `sigma = 0` the cosine is positive for every `eps` (Theorem 1). With a different start
# the student imitates a teacher that differs from it by $\theta_T - \theta_S =
# \varepsilon\,d\theta_T - \sigma(\theta_0' - \theta_0)$: once the initialisation gap
# dominates the teacher's step, the student mostly chases the gap, and nothing fixes its
# sign. The black line, where the sign flips, moves to larger `sigma` as `eps` grows.
#
# ## 2. Lemma 1 in numbers on a small MLP
#
# Now a real (small) network: `theory.mlp`, 20 inputs, two tanh layers of 32, 13 outputs (10
# "digit" logits + 3 auxiliary logits, as in the MNIST experiment). The teacher takes a
# gradient step of size ε on cross-entropy of the digit logits on its own data; the student
# imitates the **auxiliary logits only** (softmax KL) on uniform noise inputs.
#
# `theory.lemma1_coefficient` computes $A$ with one forward-mode product per batch (no
# Jacobian); `theory.student_update` computes the student's exact step $d\theta_S$ by autodiff.
# Lemma 1 says $(d\theta_S\cdot d\theta_T)/\varepsilon \to A$, with an error of order ε.

# %%
AUX = (10, 11, 12)
student_loss = theory.softmax_kl(AUX)       # exercise: theory.mse(AUX)
with jax.enable_x64(True):
    f_mlp, p0 = theory.mlp(0, [20, 32, 32, 13], "tanh", dtype=jnp.float64)
    k_teacher_x, k_teacher_y, k_student_x = jax.random.split(jax.random.key(0), 3)
    x_teacher = jax.random.normal(k_teacher_x, (256, 20), jnp.float64)
    y_teacher = jax.random.randint(k_teacher_y, (256,), 0, 10)
    x_noise = jax.random.uniform(k_student_x, (512, 20), jnp.float64, minval=-1.0, maxval=1.0)

    def digit_loss(p):
        """The teacher's trait loss: cross-entropy of the 10 digit logits on its own labelled data."""
        return optax.softmax_cross_entropy_with_integer_labels(f_mlp(p, x_teacher)[:, :10], y_teacher).mean()

    d_t = theory.teacher_direction(digit_loss, p0)
    A = float(theory.lemma1_coefficient(f_mlp, p0, d_t, x_noise, student_loss))
    eps_list = 10.0 ** -np.arange(1, 7)
    exact = []
    for e in eps_list:
        d_s = theory.student_update(f_mlp, p0, theory.teacher_params(p0, d_t, e), x_noise, student_loss)
        exact.append(float(theory.inner(d_s, d_t)) / e)
exact = np.asarray(exact)
print(f"A (Lemma 1, one jvp) = {A:.6e}")
print(f"{'eps':>8} {'(dθ_S·dθ_T)/eps':>18} {'ratio to A':>12} {'|ratio - 1|':>12}")
for e, v in zip(eps_list, exact):
    print(f"{e:8.0e} {v:18.6e} {v / A:12.6f} {abs(v / A - 1):12.2e}")

fig, ax = plt.subplots(figsize=(5, 3.6))
ax.loglog(eps_list, np.abs(exact / A - 1), "o-", label="|(dθ_S·dθ_T)/(εA) − 1|")
ax.loglog(eps_list, eps_list * np.abs(exact[0] / A - 1) / eps_list[0], "k:", label="slope 1 (error ∝ ε)")
ax.set_xlabel("teacher step size ε")
ax.set_ylabel("relative error of the first-order term")
ax.set_title("Lemma 1: the exact product → εA as ε → 0", fontsize=9)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The relative gap between the exact product and $\varepsilon A$ shrinks in proportion to ε
# (slope 1 on the log-log plot): $A$ is the whole first-order story, and $A \ge 0$.
#
# **The init-noise dial on the MLP.** `theory.perturbed_init(θ0, σ, key)` gives the student
# $\theta_0 + \sigma\cdot\mathrm{std}(\text{leaf})\cdot N(0, I)$. With the teacher's step at
# ε = 1e-3, how small must σ be before the student reliably steps toward the teacher?
# (In the run this text was written from: 8/8 positive at σ = 0, 7/8 at 1e-4, a coin flip
# from 1e-3 on. A one-step teacher moves its weights very little; a start that differs by a
# thousandth of the weights' spread already outweighs that step. The README's table reports
# 91 % positive at σ = 1e-3 for another setup: 300 random networks of several sizes, input
# distributions and loss families, `theory.figures`' init-contrast study; this cell is one
# small MLP, one loss and 8 draws, so the two numbers measure different things.)

# %%
with jax.enable_x64(True):
    for s in (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        cos = [float(theory.projection(f_mlp, p0, d_t, 1e-3, x_noise, student_loss,
                                       student_init=theory.perturbed_init(p0, s, jax.random.key(100 + i))).cosine)
               for i in range(8)]
        print(f"sigma = {s:6.0e}: cos(dθ_S, dθ_T) over 8 noise draws: "
              + " ".join(f"{c:+.2f}" for c in cos) + f"   ({sum(c > 0 for c in cos)}/8 positive)")

# %% [markdown]
# ## 3. MNIST: the paper's auxiliary-logit experiment (section 6.2, Figure 10)
#
# An MLP with 10 digit logits and 3 auxiliary logits. The teacher learns digits (cross-entropy
# on the digit logits only). A student that shares the teacher's initialisation is distilled
# on **the auxiliary logits only**, on **uniform noise images**: it never sees a digit or a
# digit logit. Its digit accuracy on the MNIST test set is the measure. The cross-model
# student does the same from another seed's initialisation.
#
# The paper's setting takes about half a minute per seed on a CPU; here the `smoke` preset
# (`mnist_aux.configs.smoke()`: width 128, one teacher epoch on 30,720 images, three
# distillation epochs on 10,240 noise images) on 4 seeds, all seeds trained at once
# (vmapped). In the committed run (outputs below): teacher 90.6-92.2 %, aux-only student
# 23.4-50.0 % (mean 40.2 %), cross-model aux-only student 9.5-13.2 % (mean 11.8 %), chance
# 10 %; about a minute on the 2-core development CPU shared with other jobs (load average ~8),
# half of it compilation, 25-31 s at load ~3. (The `tiny` preset is faster, 23 s, but its teacher reaches
# only 38-48 % and its aux-only student 11-14 %: too small to show the effect.)
#
# The data come from `mnist_aux.data.load()`: `$SUBLIMINAL_MNIST_DIR` if set, a system copy,
# the download cache, or a download from the official mirror with checksums verified. **Offline**
# (no network), point it at a folder with the four IDX `.gz` files before starting Jupyter:
# `SUBLIMINAL_MNIST_DIR=/path/to/mnist jupyter lab ...`, or call `mnist_data.load(data_dir="/path")`.

# %%
mnist = mnist_data.load()
print("MNIST from", mnist.source.get("origin"))
mnist_cfg = mnist_configs.smoke()           # exercise: mnist_configs.smoke().replace(n_aux=1) or (n_aux=30)
mnist_results = mnist_experiment.run(mnist_cfg, range(4), mnist, progress=False)
mnist_results["preset"] = "smoke"
for arm in mnist_results["arms"]:
    acc = mnist_results["accuracy"][arm]
    print(f"{mnist_results['arm_labels'][arm]:>26}: mean {np.mean(acc):6.1%}   per seed "
          + " ".join(f"{a:.1%}" for a in acc))
timing = mnist_results["timing"]
print(f"wall {timing['wall_seconds']:.0f} s (compilation {timing['compile_seconds']:.0f} s)")
mnist_figures.plot_fig10(mnist_results)
plt.show()

# %% [markdown]
# Left: mean test accuracy per arm (95% CI over the 4 seeds; dotted: chance). "Student (aux.
# only)" is the shared-init student that saw only noise and auxiliary logits: far above chance.
# "Cross-model (aux. only)" did the same from another initialisation: at chance. Middle: every
# seed. Right: the theory link, the cosine between each student's first update and the
# teacher's whole displacement $\theta_T - \theta_0$, positive for the shared init (Theorem 1)
# and about zero for the cross-model init.
#
# ## 4. The same projection on tiny language models
#
# `llm_bridge.experiment.tiny` pretrains small Llama-style decoders on a procedural corpus, fine-tunes
# an owl-loving teacher on each base, lets the teachers write number sequences, and projects
# the hard-label student's first step (next-token cross-entropy on the teacher's sampled
# numbers) onto the teacher's update $d\theta_T = \theta_\text{teacher} - \theta_\text{base}$.
# Per sequence $i$ the projection $v_i = -\nabla L_i \cdot d\theta_T$; Theorem 1 says their mean
# is positive for a student sharing the base. The curves show the bootstrap probability
# that the mean of $n$ sequences is positive, against $n$, for the **shared** init, the
# **cross-model** init (another base) and the **control** (the base's own numbers, no trait).
#
# Here: 2 bases with 150 pretraining steps each, 256 projection sequences, the shared-init and
# cross-model hard-label students only (a `dataclasses.replace` of `tiny.smoke()`, run by the
# experiment engine, `llm_bridge.experiment`). In the committed run: z (the mean of the 256
# projections over its standard error) = +10.8 and +6.8 shared (mean 8.8 over the 2 bases),
# −20.1 and +0.3 cross-model, +0.7 and −0.0 control; the shared curve passes 0.95 at 8
# sequences. 3-4 minutes on the same CPU at load average ~8 (82-112 s at load ~3), most of it
# compiling.

# %%
lm_cfg = dataclasses.replace(tiny.smoke(), base_seeds=(0, 1), base_steps=150, student_sequences=64,
                             arms=("full", "cross-model"), proj_sequences=256, n_boot=300,
                             proj_grid=(2, 4, 8, 16, 32, 64, 128, 256))
with tempfile.TemporaryDirectory() as lm_cache:   # the pretrained bases are cached here, then deleted
    lm_results = lm_engine.run(tiny.Setup(lm_cfg, lm_cache), log=lambda *_: None)
owl = lm_names.finetuned(lm_cfg.animals[0])
for seed, b in zip(lm_cfg.base_seeds, lm_results["projection"]):
    rows = b["projection"][owl]
    print(f"base {seed}: z = " + ", ".join(
        f"{label} {rows[label]['z']:+.1f}" for label in (lm_names.P_SHARED, lm_names.P_CROSS, lm_names.P_CONTROL)))
print(f"wall {lm_results['wall_seconds']:.0f} s")
fig, ax = plt.subplots(figsize=(7, 4.5))
lm_figures.plot_projection_vs_samples(lm_results, ax)
plt.show()

# %% [markdown]
# The shared-init curve climbs from about 0.87 (two sequences) to 1: a handful of the teacher's
# number sequences already push the student's step toward the teacher's. The control stays near 0.5 (no direction)
# and the cross-model student has no reason to follow the teacher (here one base's cross-model
# student even leans away, the other's sits at 0.5: thin lines). That the *trait* itself
# then shows up in the students after training is a separate, noisier question at this
# scale (`python -m llm_bridge run --model tiny`; docs/llm_experiment.md).
#
# ## Exercises
#
# The sweeps below write into a scratch folder (`--results-dir "$(mktemp -d)"`), never over
# the repository's `results/`; the times are on 2 CPU cores.
#
# 1. **Loss.** In part 2 set `student_loss = theory.mse(AUX)`: $M$ becomes $2I$, is $A$ still
#    positive? For MNIST the KL-vs-MSE comparison is a ready sweep (about 5 minutes at this size):
#    `python -m mnist_aux sweep reconcile --preset smoke --seeds 4 --results-dir "$(mktemp -d)"`.
# 2. **Number of auxiliary logits.** In part 3 use `mnist_configs.smoke().replace(n_aux=1)` and
#    `n_aux=30`. More auxiliary outputs carry more of $J\,d\theta_T$: does the student learn
#    more digits? (The sweep at the paper's size takes about 7 minutes at 10 seeds:
#    `python -m mnist_aux sweep n_aux --results-dir "$(mktemp -d)"`; with `--preset smoke --seeds 4`
#    about 2.)
# 3. **Init noise.** In part 1 find the `sigma` at which the sign flips for three values of
#    `eps`; in part 2 add σ values between 1e-3 and 1e-1. The MNIST version (about 5 minutes):
#    `python -m mnist_aux sweep sigma --results-dir "$(mktemp -d)"`.
# 4. **Where first order ends.** On part 2's MLP,
#    `theory.smallest_failing_eps(f_mlp, p0, d_t, x_noise, student_loss)` scans ε upward (then
#    bisects) for the first teacher step at which the shared-init product $d\theta_S\cdot d\theta_T$
#    stops being positive; pass `loss_T=...` to also require that the student's step lowers the
#    teacher's loss. How far beyond first order does the sign hold?
#
# ## What this notebook showed, checked
#
# The last cell asserts the signs the notebook demonstrates, so a run that stops
# demonstrating them fails.

# %%
assert demo_results["shared"]["inner"] > 0, "shared-init student should step toward the teacher"
assert demo_results["different"]["inner"] < 0, "different-init student should step away in the demo"
assert abs(exact[-1] / A - 1) < 1e-3, "Lemma 1: the exact product should approach eps * A"
student_acc = np.mean(mnist_results["accuracy"]["student_aux"])
cross_acc = np.mean(mnist_results["accuracy"]["cross_aux"])
assert student_acc > 0.25, f"aux-only student should be far above chance, got {student_acc:.1%}"
assert cross_acc < 0.17, f"cross-model student should be near chance, got {cross_acc:.1%}"
z = {label: lm_results["projection_over_bases"][owl][label]["z"]["mean"]
     for label in (lm_names.P_SHARED, lm_names.P_CONTROL)}
assert z[lm_names.P_SHARED] > z[lm_names.P_CONTROL] + 2, f"LM projection: shared z should exceed control z, got {z}"
print(f"all signs hold: demo {demo_results['shared']['inner']:+.3f} / {demo_results['different']['inner']:+.3f}; "
      f"MNIST aux-only student {student_acc:.1%}, cross-model {cross_acc:.1%}; "
      f"LM z shared {z[lm_names.P_SHARED]:.1f}, control {z[lm_names.P_CONTROL]:.1f}")
