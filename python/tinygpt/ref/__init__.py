"""NumPy kernels: the float64 test oracle and (in float32) the NumPy backend. One file per kernel family,
same stems as csrc/, cuda/, tests/ and bench/. Argument order everywhere: out, inputs, dims/options.
Scalars are Python floats so a float32 computation stays float32 under NumPy 2's promotion rules."""
