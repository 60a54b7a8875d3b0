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
from .context import BUILD_TYPE_FORWARD  # noqa: F401
from .context import BUILD_TYPE_GRAD  # noqa: F401
from .context import BUILD_TYPE_OPT  # noqa: F401
from .context import LOSS_TYPE_CROSS_ENTROPY  # noqa: F401
from .context import LOSS_TYPE_MEAN  # noqa: F401
from .context import LOSS_TYPE_MEAN_SQUARED_ERROR  # noqa: F401
from .context import LOSS_TYPE_SUM  # noqa: F401
from .context import OPTIMIZER_TYPE_ADAMW  # noqa: F401
from .context import OPTIMIZER_TYPE_SGD  # noqa: F401
from .context import AdamWParams  # noqa: F401
from .context import OptContext  # noqa: F401
from .context import OptimizerParams  # noqa: F401
from .context import OptParams  # noqa: F401
from .context import SGDParams  # noqa: F401
from .context import default_params  # noqa: F401
from .context import get_constant_optimizer_params  # noqa: F401
from .context import get_default_optimizer_params  # noqa: F401
from .context import opt_alloc  # noqa: F401
from .context import opt_context_optimizer_type  # noqa: F401
from .context import opt_eval  # noqa: F401
from .context import opt_free  # noqa: F401
from .context import opt_grad_acc  # noqa: F401
from .context import opt_init  # noqa: F401
from .context import opt_inputs  # noqa: F401
from .context import opt_labels  # noqa: F401
from .context import opt_loss  # noqa: F401
from .context import opt_ncorrect  # noqa: F401
from .context import opt_outputs  # noqa: F401
from .context import opt_pred  # noqa: F401
from .context import opt_reset  # noqa: F401
from .context import opt_static_graphs  # noqa: F401
from .context import optimizer_name  # noqa: F401
from .dataset import Dataset  # noqa: F401
from .dataset import dataset_data  # noqa: F401
from .dataset import dataset_free  # noqa: F401
from .dataset import dataset_get_batch  # noqa: F401
from .dataset import dataset_init  # noqa: F401
from .dataset import dataset_labels  # noqa: F401
from .dataset import dataset_ndata  # noqa: F401
from .dataset import dataset_shuffle  # noqa: F401
from .fit import epoch  # noqa: F401
from .fit import epoch_callback_progress_bar  # noqa: F401
from .fit import fit  # noqa: F401
from .fit import progress_line  # noqa: F401
from .result import Result  # noqa: F401
from .result import result_accuracy  # noqa: F401
from .result import result_free  # noqa: F401
from .result import result_init  # noqa: F401
from .result import result_loss  # noqa: F401
from .result import result_ndata  # noqa: F401
from .result import result_pred  # noqa: F401
from .result import result_reset  # noqa: F401
