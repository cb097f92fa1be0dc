"""Stores of detections + embeddings and their FAISS indexes: the indexed footage gallery
(:mod:`.store`, :mod:`.index`), search over it (:mod:`.search`) and the results it writes
(:mod:`.report`). h5py, NumPy, FAISS and PIL only: no network runs here."""
