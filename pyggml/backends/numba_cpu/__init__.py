"""The Numba CPU backend: kernels as cfuncs over node descriptors, run by a persistent pool
of threads that walk a lowered node table in nogil code (ggml-cpu's design).

  intrinsics.py   llvmlite intrinsics: atomics, typed pointers, indirect kernel calls, pause
  desc.py         the per-node descriptor layout and its njit accessors
  executor.py     NodeTable, the nogil executor loop, WorkerPool
  kernels/        the kernel table (KERNELS) and one module per kernel family
  backend.py      NumbaBackend (plan, lower once, cache on the graph, run)

Importing this package does not import Numba's compiled code; the backend does on use.
"""
