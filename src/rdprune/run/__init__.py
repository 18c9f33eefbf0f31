"""Running one config: the pipeline (:mod:`.pipeline`), the run specification parsed from the
config (:mod:`.spec`), the up-front checks (:mod:`.checks`), what a run leaves behind
(:mod:`.outputs`), where it reports (:mod:`.loggers`) and the finished-run guard (:mod:`.guard`)."""
