"""The functional API: every op's forward and backward on numpy arrays.

Arrays are NCHW (or N×F) float32, float64 for gradient checks; weights are in PyTorch's
layouts, so ``torch.nn.functional`` code maps onto these names one to one.  Each forward takes an
optional ``out=`` buffer; each backward returns the gradients of its inputs.
"""

from .ops.activation import (
    leaky_relu,
    leaky_relu_backward,
    log_softmax,
    log_softmax_backward,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    softmax,
    softmax_backward,
    tanh,
    tanh_backward,
)
from .ops.conv import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward
from .ops.linear import linear, linear_backward
from .ops.loss import softmax_cross_entropy
from .ops.norm import batch_norm2d, batch_norm2d_backward, dropout, dropout_backward
from .ops.pool import (
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    adaptive_max_pool2d,
    adaptive_max_pool2d_backward,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
)
from .ops.resample import upsample_nearest2d, upsample_nearest2d_backward

__all__ = [
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d",
    "adaptive_max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "batch_norm2d",
    "batch_norm2d_backward", "conv2d", "conv2d_backward", "conv_transpose2d",
    "conv_transpose2d_backward", "dropout", "dropout_backward", "leaky_relu",
    "leaky_relu_backward", "linear", "linear_backward", "log_softmax", "log_softmax_backward",
    "max_pool2d", "max_pool2d_backward", "relu", "relu_backward", "sigmoid", "sigmoid_backward",
    "softmax", "softmax_backward", "softmax_cross_entropy", "tanh", "tanh_backward",
    "upsample_nearest2d", "upsample_nearest2d_backward",
]
