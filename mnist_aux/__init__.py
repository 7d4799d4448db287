"""mnist_aux: the paper's MNIST auxiliary-logit experiment (section 6.2, Figure 10) in JAX.

Modules, in data-flow order: ``data`` (validated IDX loading), ``configs`` (presets
``paper``, ``smoke`` and ``tiny``), ``model`` (the NNX MLP and its pure ``apply``), ``train``
(pure per-seed keys, inits, teacher epochs: the one training skeleton), ``engine`` (the one
student engine: K students per seed as arms, many seeds at once: vmap, chunks, sharding),
``experiment`` (Figure 10's arms and results), ``figures`` (the one figure registry for
paper_figs.py, and ``mnist_aux_fig10``). Command line: ``python -m mnist_aux run --preset paper --seeds 100``
(results under ``results/`` in the working directory). See docs/mnist_aux.md.

Dissection (docs/mnist_dissect.md): ``dissect`` (one teacher, K students of any loss,
reduction, optimizer, init and input distribution), ``inputs`` (the distillation input
distributions), ``teachers`` (the trained-teacher cache), ``sweeps`` (named sweeps cached point
by point: ``python -m mnist_aux sweep NAME``), ``alignment`` (step-by-step alignment with
the projection ablations and liminal training as a per-step hook of the engine: ``python -m
mnist_aux align``) and ``dissect_figures`` (their figures).
"""
