"""harness: what every run of the project shares, and no mathematics.

- :mod:`harness.results`: results folders, atomic writes, provenance (commit, versions, CPU and
  its vector ISA), the guard that keeps a default results file from being overwritten by another run.
- :mod:`harness.cache`: on-disk caches keyed by config, a fingerprint of the code that computes
  the entry, and a format version (a cache is never read by code other than the code that wrote it).
- :mod:`harness.figures`: the figure protocol of ``paper_figs.py`` and the one-axes figure record.
- :mod:`harness.mesh`: the ``--mesh data=N[,model=M]`` flag and multi-host start-up.

It imports nothing of the project's (like :mod:`theory`'s mathematics): :mod:`theory`'s figures
and demo, :mod:`mnist_aux` and :mod:`llm_bridge` import it.
"""
