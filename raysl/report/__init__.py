"""Results read back from storage: an experiment directory as trials with statuses (experiment), its leaderboard,
plots, study plots, TensorBoard hparams, the `raysl report` build and the comparison of several experiments.

Pure file readers and writers (no Ray): the sweep writes its leaderboard through them at its end, and
`raysl report` re-reads any experiment, finished, failed or interrupted, local or on object storage.
Imports raysl.config, raysl.io and raysl.errors.
"""
