"""The runtime every product shares: the :class:`~.searcher.Searcher` protocol, the value
types that cross module boundaries (:mod:`.types`), loading a model spec (student checkpoint,
teacher config, ONNX file) with its fingerprint (:mod:`.loading`), how a model runs
(:mod:`.settings`), the one FAISS module (:mod:`.faiss_index`) and ONNX export and runtime
(:mod:`.onnx`). This file imports nothing, so torch-free modules can use the torch-free parts."""
