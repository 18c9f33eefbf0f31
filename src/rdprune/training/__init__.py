"""Training: the one loop (:mod:`.loop`) behind dense training and fine-tuning under masks
(:mod:`.train`), data-parallel workers (:mod:`.distributed`), preemption-safe stops
(:mod:`.preemption`) and ADMM (:mod:`.admm`)."""
