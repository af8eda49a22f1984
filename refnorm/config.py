"""One place for refnorm's numeric conventions.

Everything a reader might want to look up about layout and defaults lives here, so that the
cells, the backends and the tests agree by construction.
"""

# Gate blocks of the 4H pre-activation, in PyTorch/cuDNN order: z = [z^i | z^f | z^g | z^o].
GATE_ORDER = ("i", "f", "g", "o")
N_GATES = len(GATE_ORDER)

DTYPES = ("float64", "float32")

# Normalisation epsilon, added once inside the square root: s = sqrt(v + eps)   (BN 4), (LN 3)
DEFAULT_EPS = 1e-5

# Population statistics of BN-LSTM by exponential average, authors' convention (BN 13):
#   pop <- (1 - momentum) * pop + momentum * batch           (alpha = 0.05 in Cooijmans' PTB code)
BN_LSTM_MOMENTUM = 0.05
# Sequence-wise BN keeps PyTorch's BatchNorm momentum.
SEQ_BN_LSTM_MOMENTUM = 0.1
# refnorm.Stack's batch norms between layers keep it too (derivations/stack.md).
STACK_NORM_MOMENTUM = 0.1

# Initial gains (Cooijmans et al. 2016 sec. 4: "gamma ... 0.1"; Ba et al. 2016 sec. 6: gains 1).
BN_GAMMA_INIT = 0.1
SEQ_BN_GAMMA_INIT = 1.0
LN_GAMMA_INIT = 1.0

# Finite differences for refnorm.gradcheck: step and pass threshold (float64 only).
#   central difference error ~ h^2 f''' (1e-12) + eps_mach |L| / h (~1e-10 |L|), far below 1e-6.
GRADCHECK_STEP = 1e-6
GRADCHECK_TOL = 1e-6
