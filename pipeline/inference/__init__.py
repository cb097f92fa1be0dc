"""A model run over footage: detections + embeddings into a gallery, and query embeddings."""
