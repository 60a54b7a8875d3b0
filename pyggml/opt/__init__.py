"""Training in the shape of ggml-opt (ggml-opt.h without the ggml_opt_ prefix where it would
repeat the module's name): datasets, the optimizer context and its three static graphs,
results, epochs with a progress bar, and fit().

    import pyggml as gg
    from pyggml import opt
    ds = opt.dataset_init(gg.TYPE_F32, gg.TYPE_F32, n_in, n_classes, ndata)
    ...                                   # fill opt.dataset_data(ds), opt.dataset_labels(ds)
    history, octx = opt.fit(None, ctx, inputs, logits, ds, opt.LOSS_TYPE_CROSS_ENTROPY,
                            opt.OPTIMIZER_TYPE_ADAMW, params_fn, nepoch=10, val_split=0.1)

The backward rules come from the ops (pyggml/autodiff.py); the optimizer steps are the
OPT_STEP_ADAMW / OPT_STEP_SGD ops.
"""
from .context import (  # noqa: F401
                      BUILD_TYPE_FORWARD,
                      BUILD_TYPE_GRAD,
                      BUILD_TYPE_OPT,
                      LOSS_TYPE_CROSS_ENTROPY,
                      LOSS_TYPE_MEAN,
                      LOSS_TYPE_MEAN_SQUARED_ERROR,
                      LOSS_TYPE_SUM,
                      OPTIMIZER_TYPE_ADAMW,
                      OPTIMIZER_TYPE_SGD,
                      AdamWParams,
                      OptContext,
                      OptimizerParams,
                      OptParams,
                      SGDParams,
                      default_params,
                      get_constant_optimizer_params,
                      get_default_optimizer_params,
                      opt_alloc,
                      opt_context_optimizer_type,
                      opt_eval,
                      opt_free,
                      opt_grad_acc,
                      opt_init,
                      opt_inputs,
                      opt_labels,
                      opt_loss,
                      opt_ncorrect,
                      opt_outputs,
                      opt_pred,
                      opt_reset,
                      opt_static_graphs,
                      optimizer_name,
)
from .dataset import (  # noqa: F401
                      Dataset,
                      dataset_data,
                      dataset_free,
                      dataset_get_batch,
                      dataset_init,
                      dataset_labels,
                      dataset_ndata,
                      dataset_shuffle,
)
from .fit import epoch, epoch_callback_progress_bar, fit, progress_line  # noqa: F401
from .result import (  # noqa: F401
                      Result,
                      result_accuracy,
                      result_free,
                      result_init,
                      result_loss,
                      result_ndata,
                      result_pred,
                      result_reset,
)
