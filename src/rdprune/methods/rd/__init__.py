"""The paper's method: rate-distortion curves (:mod:`.profiling`, on the traced graph of
:mod:`.graph`), their distortion measure (:mod:`.distortion`), the exact DP (:mod:`.dp`) and the
method object that ties them together (:mod:`.rate_distortion`); :mod:`.additivity` checks the
premise."""
