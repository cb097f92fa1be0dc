"""Networks and their weights: backbones, heads, OIM, the end-to-end student, the two teachers
and the two-step searcher built from them; building, saving and loading checkpoints.

Every searchable model has the :class:`~pipeline.runtime.searcher.Searcher` interface
(``detect`` for gallery images, ``embed_boxes`` for queries).
"""
