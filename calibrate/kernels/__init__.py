"""Our own Triton kernels (GEMM, prefill/decode attention, elementwise), each with a
correctness check against a float64 reference.  Needs torch + triton + CUDA."""
