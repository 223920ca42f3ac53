"""Ahead-of-time GPU compile of our Triton kernels, run as its own process.

``TRITON_INTERPRET=1`` (set for the kernel tests on CPU) makes Triton patch its builder for
the whole process, and ``triton.compile`` then fails inside the interpreter instead of
running the real compiler. The tests therefore start this script in a child process
without that variable; it compiles one kernel for each GPU architecture asked for and writes the PTX
into ``OUT/DTYPE-smCAP.ptx`` for every dtype the launchers accept; where the real compiler
rejects the kernel, ``OUT/DTYPE-smCAP.err`` holds its message instead.

Usage: ``python aot_compile.py {average,perplexity} OUT CAPABILITY [CAPABILITY ...]``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Triton's names for the torch dtypes in kernels.SUPPORTED_DTYPES.
TRITON_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def dtype_names() -> list[str]:
    """Triton's names of every dtype the launchers accept."""
    from ablate.kernels import SUPPORTED_DTYPES

    return [TRITON_NAMES[str(dtype).removeprefix("torch.")] for dtype in SUPPORTED_DTYPES]


def _signature(kernel, types: dict[str, str], constexprs: dict) -> dict[str, str]:
    # Keyword order must follow the kernel's parameters: build it from the kernel itself.
    types = types | dict.fromkeys(constexprs, "constexpr")
    return {name: types[name] for name in kernel.arg_names}


def average_source(dtype: str):
    from triton.compiler import ASTSource

    from ablate.kernels.triton_average import BLOCK_P, _weighted_average_kernel

    types = {
        "stack_ptr": f"*{dtype}",
        "weights_ptr": "*fp32",
        "out_ptr": f"*{dtype}",
        "n_members": "i32",
        "n_cols": "i64",
        "stride_member": "i64",
    }
    constexprs = {"BLOCK": BLOCK_P}
    kernel = _weighted_average_kernel
    return ASTSource(kernel, _signature(kernel, types, constexprs), constexprs=constexprs)


def perplexity_source(dtype: str):
    """The launcher's GPU configuration for ``dtype``: bias and soft-capping on, so every
    branch of the kernel body is compiled."""
    from triton.compiler import ASTSource

    from ablate.kernels.triton_perplexity import GPU_BLOCKS, _token_nll_kernel

    pointers = ("hidden_ptr", "weight_ptr", "bias_ptr", "targets_ptr", "part_lse_ptr")
    types = dict(zip(pointers, (f"*{dtype}", f"*{dtype}", "*fp32", "*i64", "*fp32"), strict=True))
    types |= {"part_target_ptr": "*fp32", "logit_scale": "fp32", "softcap": "fp32"}
    for name in ("n_tokens", "n_vocab", "hidden_size", "stride_hidden", "stride_weight"):
        types[name] = "i32"
    types["tiles_per_split"] = "i32"
    constexprs = dict(
        zip(("BLOCK_T", "BLOCK_V", "BLOCK_H"), GPU_BLOCKS, strict=True),
        HAS_BIAS=True,
        HAS_SOFTCAP=True,
        UPCAST=False,
        IEEE=dtype == "fp32",  # what token_nll_forward_triton passes on a GPU
    )
    kernel = _token_nll_kernel
    return ASTSource(kernel, _signature(kernel, types, constexprs), constexprs=constexprs)


SOURCES = {"average": average_source, "perplexity": perplexity_source}


def main(argv: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(
            "aot_compile: run without TRITON_INTERPRET (it replaces the compiler)", file=sys.stderr
        )
        return 2
    if len(argv) < 3 or argv[0] not in SOURCES:
        print(__doc__, file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget

    kernel, out = argv[0], Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for dtype in dtype_names():
        for capability in map(int, argv[2:]):
            stem = out / f"{dtype}-sm{capability}"
            try:
                source = SOURCES[kernel](dtype)
                compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
            except Exception as error:  # the compiler's message is the test's failure text
                stem.with_suffix(".err").write_text(f"{type(error).__name__}: {error}")
            else:
                stem.with_suffix(".ptx").write_text(compiled.asm["ptx"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
