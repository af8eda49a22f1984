"""Optimizers that update a dict of NumPy parameters in place: plain SGD and Adam.

    opt = Adam(params, lr=1e-3)          # params: {name: ndarray}, e.g. cell.params
    opt.step(grads)                      # grads: {name: ndarray}; extra keys (x, h0, ...) ignored

Only the names in `params` are updated, each array in place (so cell.params sees the change),
and the grads dict and its arrays are never modified. The formulas, per parameter θ with
gradient g at step k = 1, 2, ... (Kingma & Ba 2015, Algorithm 1):

    (ADAM 1)  g ← g + λ θ                                  weight decay λ (L2, off by default)
    (ADAM 2)  m ← β1 m + (1 − β1) g,    v ← β2 v + (1 − β2) g²
    (ADAM 3)  m̂ = m / (1 − β1^k),       v̂ = v / (1 − β2^k)     bias correction
    (ADAM 4)  θ ← θ − lr · m̂ / (sqrt(v̂) + ε)

    (SGD 1)   θ ← θ − lr · (g + λ θ)

clip_grad_norm rescales a set of gradients so that their joint L2 norm is at most max_norm
(returning new arrays) -- the usual guard for recurrent nets.
"""
import numpy as np


def _check_params(params):
    if not isinstance(params, dict) or not params:
        raise ValueError("params must be a non-empty dict of name -> ndarray")
    for name, value in params.items():
        if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"params[{name!r}] must be a floating-point ndarray")
    return params


def _grad_for(grads, name, value):
    if name not in grads:
        raise ValueError(f"grads has no entry for parameter {name!r}")
    g = np.asarray(grads[name])
    if g.shape != value.shape:
        raise ValueError(f"grads[{name!r}] has shape {g.shape}, parameter has {value.shape}")
    return g


class SGD:
    """θ ← θ − lr (g + λθ) for every array of `params`, in place (SGD 1)."""

    def __init__(self, params, lr=1e-2, weight_decay=0.0):
        self.params = _check_params(params)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)

    def step(self, grads):
        for name, theta in self.params.items():
            g = _grad_for(grads, name, theta)
            if self.weight_decay:
                g = g + self.weight_decay * theta                               # (SGD 1)
            theta -= self.lr * g


class Adam:
    """Adam with bias correction (ADAM 1)-(ADAM 4), in place on every array of `params`.

    The moments are kept per name in `m` and `v` (arrays of the parameter's dtype); `t` counts
    the steps taken. Weight decay (L2 added to the gradient) is 0 unless asked for."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.params = _check_params(params)
        self.lr = float(lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.m = {name: np.zeros_like(value) for name, value in params.items()}
        self.v = {name: np.zeros_like(value) for name, value in params.items()}
        self.t = 0

    def step(self, grads):
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        for name, theta in self.params.items():
            g = _grad_for(grads, name, theta)
            if self.weight_decay:
                g = g + self.weight_decay * theta                               # (ADAM 1)
            m, v = self.m[name], self.v[name]
            m *= b1
            m += (1 - b1) * g                                                   # (ADAM 2)
            v *= b2
            v += (1 - b2) * g * g
            m_hat = m / (1 - b1 ** self.t)                                      # (ADAM 3)
            v_hat = v / (1 - b2 ** self.t)
            theta -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)              # (ADAM 4)


def global_norm(grads, names):
    """sqrt(Σ_names Σ g²): the joint L2 norm of the named gradients."""
    return float(np.sqrt(sum(float(np.sum(np.square(grads[name]))) for name in names)))


def clip_grad_norm(grads, names, max_norm):
    """(clipped, norm): a new dict with the named gradients scaled by min(1, max_norm / norm)
    (other entries passed through) and the norm before clipping. grads is not modified."""
    norm = global_norm(grads, names)
    scale = 1.0 if norm <= max_norm else max_norm / norm
    clipped = dict(grads)
    for name in names:
        clipped[name] = grads[name] * scale
    return clipped, norm
