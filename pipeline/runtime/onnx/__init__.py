"""The student as one ONNX file: export (:mod:`.export`) and an ONNX Runtime searcher that needs
only NumPy + onnxruntime (:mod:`.runtime`)."""
