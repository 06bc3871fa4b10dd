"""NumPy kernels in float32: the numpy backend's math (python/tinygpt/gpt2.py calls them). The tests check them,
like every backend's kernels, against their own float64 oracles. One file per kernel family, same stems as
csrc/, cuda/, tests/ and bench/. Argument order everywhere: out, inputs, dims/options. Scalars are Python floats
so a float32 computation stays float32 under NumPy 2's promotion rules."""
