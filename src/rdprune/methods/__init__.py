"""Allocation methods: how many weights each prunable layer loses under a global budget.

Every method answers ``allocate(problem) -> Allocation`` (:mod:`.problem`). The baselines are pure
functions (:mod:`.baselines` for any network, :mod:`.llm_baselines` for language models), wrapped
as method objects in :mod:`.allocators`; the paper's rate-distortion method is :mod:`.rd`.
"""

from rdprune.methods.allocators import Baseline, Fixed, LMBaseline
from rdprune.methods.problem import Allocation, Problem
from rdprune.methods.rd.rate_distortion import RateDistortion, rate_distortion

__all__ = ["Allocation", "Baseline", "Fixed", "LMBaseline", "Problem", "RateDistortion",
           "rate_distortion"]
