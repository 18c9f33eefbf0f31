"""Pruning a model, given how many weights each layer loses: which layers are prunable
(:mod:`.layers`), which weights go (:mod:`.masks`, with the calibration statistics of
:mod:`.statistics`), the per-round targets (:mod:`.targets`) and MAC counts (:mod:`.flops`)."""
