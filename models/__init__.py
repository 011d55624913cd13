"""Keras models that run on the fused recurrence ops (ELMo, NMT) and a TF-level beam search."""
