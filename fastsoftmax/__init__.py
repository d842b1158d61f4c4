"""fastsoftmax: fused CPU kernels for softmax, log-softmax and cross-entropy.

Importing the package compiles nothing and imports no backend; the first call
does (Numba kernels are cached on disk after the first compile).
"""
from . import api as _api
from ._backends import (available_backends, get_backend, get_num_threads, set_backend,
                        set_num_threads, show_config, use_backend)
from .api import cross_entropy, cross_entropy_with_grad, entropy_with_grad
from .linear_ce import (get_linear_cross_entropy_chunk_bytes, linear_cross_entropy,
                        linear_cross_entropy_with_grad, release_linear_cross_entropy_buffers,
                        set_linear_cross_entropy_chunk_bytes)

__version__ = "0.1.0"  # the one version source (pyproject.toml reads it)

# the rows ops of the op table (softmax, log_softmax, logsumexp, ...)
globals().update({_name: getattr(_api, _name) for _name in _api.ROW_FUNCTIONS})

__all__ = [*_api.ROW_FUNCTIONS, "cross_entropy", "cross_entropy_with_grad", "entropy_with_grad",
           "linear_cross_entropy", "linear_cross_entropy_with_grad",
           "set_linear_cross_entropy_chunk_bytes", "get_linear_cross_entropy_chunk_bytes",
           "release_linear_cross_entropy_buffers", "set_backend", "get_backend",
           "available_backends", "use_backend", "set_num_threads",
           "get_num_threads", "show_config", "__version__"]

# the elementwise ops (issue 17)
from .api import (binary_cross_entropy_with_logits,  # noqa: E402
                  binary_cross_entropy_with_logits_with_grad, kl_div, kl_div_with_grad,
                  log_sigmoid, sigmoid)

__all__ += ["kl_div", "kl_div_with_grad", "binary_cross_entropy_with_logits",
            "binary_cross_entropy_with_logits_with_grad", "sigmoid", "log_sigmoid"]

# candidate sampling and sampled softmax (issue 17)
from .candidate_sampling import (log_uniform_candidate_sampler,  # noqa: E402
                                 uniform_candidate_sampler)
from .sampled_softmax import sampled_softmax_loss, sampled_softmax_loss_with_grad  # noqa: E402

__all__ += ["log_uniform_candidate_sampler", "uniform_candidate_sampler", "sampled_softmax_loss",
            "sampled_softmax_loss_with_grad"]


# KL and JSD between two sets of logits (issue 17, distillation)
from .api import jsd_logits, jsd_logits_with_grad  # noqa: E402

__all__ += ["jsd_logits", "jsd_logits_with_grad"]
