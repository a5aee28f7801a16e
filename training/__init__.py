"""Offline work on bundles: pretrain the encoder, finetune and calibrate the head, evaluate.

May import ``model``, ``ingest`` (the synthetic line), ``runtime`` and ``schemas``; no service
imports it (README, "Dependency rule").
"""
