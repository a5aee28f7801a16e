"""Build, load and run a model bundle: the frozen CLIP encoder, the MLLM head, the CLIP baseline.

Imports only ``schemas`` and the numeric libraries (torch, transformers, numpy, cv2,
safetensors, gguf); nothing here is imported at package import, so ``import model`` is free.
"""
