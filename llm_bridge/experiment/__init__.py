"""The LM experiments: one engine, two setups, one arm registry.

======================  ==========================================================================
:mod:`.engine`          the phases every setup runs, the plan of students, the transfer tables
:mod:`.arms`            the student arms (init x update x target x optimizer), one entry each
:mod:`.tiny`            the tiny setup: bases pretrained here (:mod:`.tiny_bases`, :mod:`.corpus`),
                        students (:mod:`.tiny_students`), projection (:mod:`.tiny_projection`)
:mod:`.chat`            the chat setup: any Hugging Face folder or GGUF file; text (:mod:`.text`),
                        sampler (:mod:`.sampler`), projection (:mod:`.chat_projection`)
:mod:`.training`        the one masked next-token loss and the one training loop
:mod:`.probe`           the one trait metric (margins) and the chat setup's exact probabilities
:mod:`.projection`      Theorem 1's per-sequence projections and their statistics
:mod:`.seeds`           the run's named random streams
:mod:`.names`           teacher, student and projection-row names (results-file keys)
:mod:`.figures`         the figures paper_figs.py draws from the results
======================  ==========================================================================

docs/llm_bridge.md ("How the engine works") says how to add an arm, a setup or an architecture.
"""

SETUPS = ("tiny", "chat")


def setup_module(model: str):
    """The module of the setup that runs ``--model``: tiny for ``"tiny"``, else chat."""
    if model == "tiny":
        from llm_bridge.experiment import tiny as module
    else:
        from llm_bridge.experiment import chat as module
    return module


def make_config(model: str, preset: str | None = None, overrides: dict | None = None):
    """The setup's config at ``preset`` (default ``paper``) with the fields ``overrides``; a ``ValueError``
    (one line) for an unknown preset, field or value."""
    import dataclasses

    module = setup_module(model)
    preset = preset or ("paper" if model == "tiny" else "standard")
    if preset not in module.PRESETS:
        raise ValueError(f"preset {preset!r} is not one of the {'tiny' if model == 'tiny' else 'chat'} setup's: "
                         f"{', '.join(module.PRESETS)}")
    known = {f.name for f in dataclasses.fields(module.Config)}
    unknown = [k for k in (overrides or {}) if k not in known]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a config field of the {'tiny' if model == 'tiny' else 'chat'} setup")
    try:
        return dataclasses.replace(module.PRESETS[preset](), **(overrides or {}))
    except TypeError as err:
        raise ValueError(f"bad config value: {err}") from None


def make_setup(model: str, cfg, *, cache_dir=None, mesh=None, parts_dir=None):
    """The setup object the engine runs (``parts_dir``: the chat setup's committed parts,
    :class:`harness.cache.Store`)."""
    module = setup_module(model)
    if model == "tiny":
        return module.Setup(cfg, cache_dir, mesh=mesh)
    return module.Setup(model, cfg, cache_dir, mesh=mesh, parts_dir=parts_dir)
