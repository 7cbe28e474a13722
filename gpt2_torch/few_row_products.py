"""Faster kernels for the matrix products of eager decoding on a CPU: a few rows times a weight matrix.

Decoding multiplies each weight by one row per sequence: B rows for a batch of B samples. Such a product reads
the whole weight for 2B flops per weight, so memory bandwidth sets its speed, and on a CPU that takes every
core reading. Measured on 2-core EPYCs (BENCHMARKS.md):
- float32, one row: MKL multiplies one row on one core. One block of the weight's rows per thread, multiplied as
  one batch (MKL's batched product runs the blocks on all threads), reads GPT-2's matrices 1.1-1.4x faster, and
  decoding gets 1.3x faster.
- float32, several rows (a batch of samples, a prompt): oneDNN's product, the one Inductor calls for its frozen
  linear layers, reads GPT-2's matrices 1.1-1.5x faster than the row blocks for 8 rows on an AVX-512 EPYC (MKL
  runs its AVX2 code on AMD processors, oneDNN its AVX-512 code), and a batch of 8 decodes 1.3x faster. It is used
  in inference mode (generate_tokens runs in it), as oneDNN's operator has no derivative; the row blocks serve
  outside it, and for a torch without oneDNN.
- bfloat16 and float16: oneDNN's matmul reads one row's bfloat16 weight at 10-20 GB/s, ATen's own kernel at
  26-32 GB/s when the weight is (out, in) contiguous, so oneDNN is switched off around a one-row product.

These are tricks of eager PyTorch on a CPU: GPT.from_pretrained gives them to a model on the CPU, and
torch.compile (which picks its own kernels) and GPUs never see them.
"""

import threading

import torch
import torch.nn as nn
from torch.nn import functional as F

# torch.backends.mkldnn.enabled is one flag for the whole process: one product at a time switches it off.
onednn_switch = threading.Lock()

MKL = torch.backends.mkl.is_available()  # the row blocks are for its batched product
FEW_ROWS = 16  # up to this many rows, the row blocks beat MKL's own float32 product (equal at 16, BENCHMARKS.md)


# oneDNN's float32 product x @ weight.T + bias, for a weight of either memory layout: a private operator (Inductor's,
# for its frozen linear layers), so looked up, not assumed; None where this torch has no oneDNN.
ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


class RowBlocks:
    """A weight (out, in) and its bias as blocks of rows, one block per thread, and the product that multiplies
    them. Made once per weight, not at every call: making the views cost a sixth of what a one-row decoding
    step spends besides reading the weights (BENCHMARKS.md). The views share the weight's memory; `fits` tells
    whether they are still views of the module's current weight and bias, for the same number of blocks."""

    def __init__(self, weight, bias, blocks):
        self.out, self.n_in = weight.shape
        size = self.out // blocks  # weight rows per block; the out % blocks rows left over are multiplied on their own
        self.split = blocks * size
        self.weight, self.bias, self.blocks = weight, bias, blocks
        self.pointers = self.pointers_of(weight, bias)
        self.w = weight[:self.split].view(blocks, size, self.n_in).transpose(1, 2)  # (blocks, in, size)
        self.b = None if bias is None else bias[:self.split].view(blocks, 1, size)  # (blocks, 1, size)
        rest = (weight[self.split:], None if bias is None else bias[self.split:])
        self.rest = rest if self.split < self.out else None

    def fits(self, weight, bias, blocks):
        # the same parameters with the same memory: model.to() and `param.data = ...` keep a parameter, not its memory
        same = weight is self.weight and bias is self.bias and blocks == self.blocks
        return same and self.pointers_of(weight, bias) == self.pointers

    @staticmethod
    def pointers_of(weight, bias):
        return weight.data_ptr(), None if bias is None else bias.data_ptr()

    def product(self, x):
        """x @ weight.T + bias for a few rows x (..., in)."""
        rows = x.numel() // self.n_in  # M
        x_rows = x.reshape(1, rows, self.n_in).expand(self.blocks, rows, self.n_in)  # (blocks, M, in): the same rows
        y = torch.bmm(x_rows, self.w) if self.b is None else torch.baddbmm(self.b, x_rows, self.w)  # (blocks, M, size)
        # each row's blocks side by side: (M, split); for one row, (blocks, 1, size) is already in that order
        y = y.view(1, self.split) if rows == 1 else y.transpose(0, 1).reshape(rows, self.split)
        if self.rest is not None:
            y = torch.cat([y, F.linear(x.reshape(rows, self.n_in), *self.rest)], dim=1)  # (M, out)
        return y.view(*x.shape[:-1], self.out)  # (..., out); a torch.Size argument takes 2 µs longer to parse


class FewRowLinear(nn.Linear):
    """nn.Linear, with the faster kernels above on a CPU. Anything else (float64, one float32 row on one thread,
    more than FEW_ROWS float32 rows outside inference mode or without oneDNN, a wrong shape, code being traced by
    torch.compile) takes nn.Linear's own.

    A decoding step of GPT-2 124M calls 49 of these, and a call's Python counts beside its product: the
    parameters are read from the module's own dict (stored_parameters)."""

    row_blocks = None  # the RowBlocks of the last float32 product without autograd, kept for the next one

    def forward(self, x):
        stored = self.stored_parameters()
        # inductor chooses its own kernels (the checks below would break its graph); a computed weight is nn.Linear's
        if torch.compiler.is_compiling() or stored is None:
            return super().forward(x)
        weight, bias = stored
        # a wrong shape goes on to nn.Linear's own product, for its error message
        fits = x.shape[-1] == self.in_features and x.numel() > 0 and self.out_features > 0
        if x.is_cpu and x.dtype == weight.dtype and fits:
            rows = x.numel() // self.in_features  # M
            if x.dtype == torch.float32:
                # oneDNN's operator has no derivative, backward or forward: inference mode rules out both (no_grad
                # leaves forward-mode AD on); it reads the bias as contiguous; the flag is the user's switch (and
                # product_without_onednn's)
                onednn = ONEDNN_LINEAR is not None and torch.backends.mkldnn.enabled
                if rows > 1 and onednn and torch.is_inference_mode_enabled():
                    bias = None if bias is None else bias.contiguous()
                    return ONEDNN_LINEAR(x.contiguous(), weight, bias, "none", [], "")
                threads = torch.get_num_threads()
                if MKL and threads > 1 and rows <= FEW_ROWS:
                    return self.row_blocks_product(x, blocks=min(threads, self.out_features))
            elif x.dtype in (torch.bfloat16, torch.float16) and rows == 1 and weight.is_contiguous():
                return self.product_without_onednn(x)
        return F.linear(x, weight, bias)

    def row_blocks_product(self, x, blocks):
        """x @ weight.T + bias for a few rows x (..., in), the weight's rows in blocks (any memory layout)."""
        weight, bias = self.stored_parameters() or (self.weight, self.bias)
        if torch.is_grad_enabled():  # views made now, so that autograd sees the product of this weight
            return RowBlocks(weight, bias, blocks).product(x)
        if self.row_blocks is None or not self.row_blocks.fits(weight, bias, blocks):
            self.row_blocks = RowBlocks(weight, bias, blocks)
        return self.row_blocks.product(x)

    def stored_parameters(self):
        """(weight, bias) as registered, read from the module's dict: nn.Module's attribute lookup costs 1-2 µs a
        call. None when either is computed rather than stored (torch.nn.utils.prune, parametrize)."""
        params = self._parameters
        return (params["weight"], params["bias"]) if "weight" in params and "bias" in params else None

    def _apply(self, fn, *args, **kwargs):
        self.row_blocks = None  # views of the memory that .to() / .float() / .cuda() replace: let it go
        return super()._apply(fn, *args, **kwargs)

    def product_without_onednn(self, x):
        with onednn_switch:
            onednn, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, False
            try:
                return super().forward(x)
            finally:
                torch.backends.mkldnn.enabled = onednn


def use_few_row_products(model: nn.Module) -> nn.Module:
    """Give every nn.Linear of model (on the CPU) the few-row kernels; the weights stay where they are."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FewRowLinear  # the same parameters and state, another forward
    return model
