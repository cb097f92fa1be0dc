"""Where a network meets images: a searcher (student, two-step teacher) loaded once and run over
a dataset or footage, giving detections and embeddings (results files, galleries)."""
