"""The only Ray in raysl, over the stages it drives: the Ray Data pipeline (pipeline, augment_actor, data_patches),
the Train worker (worker) and trainer (trainer, in_trial), Tune's run (tune, trial, search, loggers, live,
sweep_end), sessions and clusters (session, local_cluster, packing) and Ray Data batch inference (embed).
Everything below runs without Ray; the entry points (raysl.api, raysl.cli) sit above.
"""
