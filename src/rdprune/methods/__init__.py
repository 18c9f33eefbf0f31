"""Allocation methods: how many weights each prunable layer loses under a global budget.

Every method is declared once, in :mod:`.registry`, and answers ``allocate(problem) ->
Allocation`` (:mod:`.problem`). The baselines are pure functions (:mod:`.baselines` for any
network, :mod:`.llm_baselines` for language models) wrapped as method objects in
:mod:`.allocators`; the paper's rate-distortion method is :mod:`.rd`; EvoPress's search is
:mod:`.evopress`.
"""
