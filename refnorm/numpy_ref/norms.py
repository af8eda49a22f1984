"""Normalisation primitives: masked batch norm and layer norm, forward above backward.

Equation tags refer to derivations/batch_norm.md and derivations/layer_norm.md. Both use the
two-pass variance (mean first, then the mean squared deviation) and add eps once, inside the
square root, so a zero variance gives ẑ = 0 and finite gradients. eps = 0 is allowed (PyTorch
fastrnns' decomposed LayerNorm has none); then a zero variance makes s = 0, which `root` reads as
s = ∞: ẑ = 0 and no gradient passes through that normalisation (BN 15), (LN 11).

Batch norm statistics run over the rows z_r with m_r = 1: the B rows of one time step for
BN-LSTM, all T·B frames for sequence-wise BN. Rows with m_r = 0 (padding) are excluded from the
statistics and get ẑ_r = 0, so nothing about them leaks into the cache or the gradients.
"""
import numpy as np


def root(var, eps):
    """s = √(var + eps) (BN 4), (LN 3), with s = 0 -- only eps = 0 and var = 0 give it -- read as
    s = ∞, so that z / s = 0 there: ẑ = 0 and dz = 0 (BN 15), (LN 11). For eps > 0, s as is."""
    s = np.sqrt(var + eps)
    return np.where(s > 0, s, np.inf)


def batchnorm_forward(z, m, gamma, beta, eps, pop=None):
    """z (N, F) rows, m (N,) 0/1 row mask, gamma (F,), beta (F,) or None.

    pop=None: training, statistics of this batch. pop=(mean, var): inference, fixed statistics.
    Returns y (N, F), zhat (N, F), mean (F,), var (F,) -- the statistics actually used.
    """
    w = m[:, None]                                           # (N, 1)
    n = max(m.sum(), 1)                                      # (BN 1); n = 0 leaves ẑ = 0 below
    if pop is None:
        mean = (w * z).sum(axis=0) / n                       # (BN 2)
        var = (w * (z - mean) ** 2).sum(axis=0) / n          # (BN 3)
    else:
        mean, var = pop
    zhat = w * (z - mean) / root(var, eps)                   # (BN 4), (BN 5) / (BN 7), (BN 15)
    y = gamma * zhat if beta is None else gamma * zhat + beta  # (BN 6)
    return y, zhat, mean, var


def batchnorm_backward(dy, zhat, var, m, gamma, eps, training):
    """Gradients of batchnorm_forward. var is the variance the forward used.

    Returns dz (N, F), dgamma (F,), dbeta (F,).
    """
    dbeta = dy.sum(axis=0)                                   # (BN 8)
    dgamma = (dy * zhat).sum(axis=0)                         # (BN 8)
    dzhat = dy * gamma                                       # (BN 9)
    w = m[:, None]
    s = root(var, eps)                                       # (BN 15): s = ∞ gives dz = 0
    if training:
        n = max(m.sum(), 1)
        mean_dzhat = (w * dzhat).sum(axis=0) / n
        mean_dzhat_zhat = (w * dzhat * zhat).sum(axis=0) / n
        dz = w / s * (dzhat - mean_dzhat - zhat * mean_dzhat_zhat)   # (BN 10)
    else:
        dz = w * dzhat / s                                   # (BN 11)
    return dz, dgamma, dbeta


def layernorm_forward(z, gamma, beta, eps, groups=1):
    """z (N, F): each row normalised over its F features, or over each of `groups` equal blocks
    (groups=4 is per-gate LN, (LN 9)). gamma, beta (F,); beta may be None.

    Returns y (N, F), zhat (N, F), mean (N, groups), var (N, groups).
    """
    N, F = z.shape
    zg = z.reshape(N, groups, F // groups)
    mean = zg.mean(axis=-1, keepdims=True)                   # (LN 1)
    var = ((zg - mean) ** 2).mean(axis=-1, keepdims=True)    # (LN 2)
    zhat = ((zg - mean) / root(var, eps)).reshape(N, F)      # (LN 3), (LN 4), (LN 11)
    y = gamma * zhat if beta is None else gamma * zhat + beta  # (LN 5)
    return y, zhat, mean[..., 0], var[..., 0]


def layernorm_backward(dy, zhat, var, gamma, eps, groups=1):
    """Gradients of layernorm_forward. Returns dz (N, F), dgamma (F,), dbeta (F,)."""
    N, F = dy.shape
    dbeta = dy.sum(axis=0)                                   # (LN 6)
    dgamma = (dy * zhat).sum(axis=0)                         # (LN 6)
    dzhat = (dy * gamma).reshape(N, groups, F // groups)     # (LN 7)
    zh = zhat.reshape(N, groups, F // groups)
    s = root(var, eps)[..., None]                            # (N, groups, 1); (LN 11)
    dz = (dzhat - dzhat.mean(axis=-1, keepdims=True)
          - zh * (dzhat * zh).mean(axis=-1, keepdims=True)) / s      # (LN 8)
    return dz.reshape(N, F), dgamma, dbeta
