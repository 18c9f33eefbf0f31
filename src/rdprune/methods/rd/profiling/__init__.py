"""Rate-distortion curves: the output distortion of pruning one layer at a time.

For every prunable layer l (model order) and every grid sparsity s, the ``num_pruned(n_l, s)``
smallest-magnitude weights of layer l *only* are zeroed (exactly the choice of
:func:`rdprune.pruning.masks.magnitude_mask`), the calibration set is run, and the logits are compared with
the logits ``Y`` of the model as given (eval mode; in iterative pruning the model already holds
zeros, and ``Y`` is *its* output):

* ``"mean"``:  mean over samples and logits of ``(Y - Y_hat)^2``;
* ``"worst"``: max over samples of the per-sample mean over logits of ``(Y - Y_hat)^2``.

Two implementations with one signature and the same result:

* :func:`rd_curves_naive` is the baseline (what the official code does): one full forward of the
  calibration set per layer per grid point, pruning the model's weights in place and restoring them.
* :func:`rd_curves` traces the model with ``torch.fx`` and never redoes work that does not depend on
  layer l: the values that feed layer l's descendants are computed once per calibration chunk and
  only the descendants are re-run per grid point, with ReLU / add results written into buffers
  nobody else reads. Grid points that cannot change the output are not run (``s = 0``, points that
  prune only weights that are already zero: distortion exactly 0; repeated prune counts: copied).
  By default it also folds eval-mode BatchNorm into the preceding conv (the mask is chosen from the
  original weight magnitudes, then applied to the fused weight) and runs convolutions in
  channels-last memory format, which CPU and GPU kernels run faster; these change float32 rounding
  only. How much rounding moves a curve is the model's business, so the claim is relative to the
  model's own noise: per model, the largest per-layer ``max |fast - naive| / max |naive|`` is
  within 8 x the same quantity for the naive scheme against itself on inputs moved by one ulp
  (measured <= 3 x on random-init EfficientNet-B0, where both are ~1e-4; on ResNet-32 the
  difference is <= 1e-5, see ``results/bench_profiling.txt``). With ``fold_bn=False,
  channels_last=False`` it runs the same kernels on the same values as the naive scheme: curves
  bitwise equal to the naive ones (same ``batch_size``). ``grid_batch`` runs several grid points
  in one forward along the batch dimension (for GPUs; slower on CPU). Vision transformers (timm,
  torchvision) take this path too. If the model cannot be traced faithfully, it falls back to
  the naive scheme with a warning.

Both leave the model exactly as it was (bitwise-equal parameters and buffers, per-module train/eval
mode), also when an exception is raised, and process the calibration set in chunks of
``batch_size`` samples. Distortions are those of :mod:`rdprune.methods.rd.distortion`, accumulated in float64.

Modules: :mod:`~rdprune.methods.rd.profiling.fast` (:func:`rd_curves`), :mod:`~rdprune.methods.rd.profiling.naive`
(:func:`rd_curves_naive`), :mod:`~rdprune.methods.rd.profiling.inputs` (calibration inputs for random-init
models), :mod:`~rdprune.methods.rd.profiling.common` (what both implementations share).
"""

from rdprune.methods.rd.distortion import REDUCTIONS
from rdprune.methods.rd.profiling.fast import rd_curves
from rdprune.methods.rd.profiling.inputs import gaussian_inputs, warm_batchnorm
from rdprune.methods.rd.profiling.naive import rd_curves_naive

__all__ = ["REDUCTIONS", "gaussian_inputs", "rd_curves", "rd_curves_naive", "warm_batchnorm"]
