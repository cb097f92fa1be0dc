"""Person search as a benchmark: run a model over a PRW / CUHK-SYSU release (:mod:`.run`), the
results file (:mod:`.results_file`), the standard protocols, metrics in NumPy, the evaluator, its
slow reference, CBGM and pictures. Only :mod:`.run` runs a network."""
