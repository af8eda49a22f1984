"""Weight initialisation schemes for the sweep, written as "scheme" or "scheme:scale".

For a cell with G gate blocks of width H (G = 4 for the LSTM family, 3 for the GRU family, 1 for
the vanilla RNN family), Wx is (D, G·H) and Wh is (H, G·H):

    gauss:s      Wx ~ N(0, (s/√D)²), Wh ~ N(0, (s/√H)²)       s = 1 is LeCun's normal init
    uniform:s    Wx, Wh ~ U(−s/√H, s/√H)                      s = 1 is torch.nn.LSTM's default
    orthogonal:s Wx, Wh with orthonormal rows (QR of a Gaussian), times s (default 1);
                 Cooijmans et al. 2016 sec. 4
    identity:s   Wh = s·[I | ... | I] (every gate block the identity: the recurrent term
                 starts as a copy of h_{t-1}; Le et al. 2015's IRNN, exactly so for the RNN),
                 Wx ~ N(0, 1/D)
    default      the cell's own constructor init, untouched

Every scheme except "default" sets the biases to 0 (b, and the GRU's recurrent candidate bias
b_hn) and leaves the gains γ and shift β_c at the cell's defaults (0.1 for the per-step BN
cells, 1 for the sequence-wise BN and LN cells, β_c = 0), so the cells of a family differ only by
their normalisation. A normalised term BN(h Wh) or LN(h Wh) is invariant to the scale of Wh
(up to eps): whatever "s" does to such a cell, it does through the direction of W, not its size.

A Stack gets the scheme in every one of its cells, drawn from the same generator in turn (layer
0 first, within a layer direction fwd then bwd); D is then each layer's own input width. The
gains and shifts of its between-layer norms stay at 1 and 0.
"""
import numpy as np

from ..cells import orthogonal_init
from ..stack import Stack

SCHEMES = ("gauss", "uniform", "orthogonal", "identity", "default")


def parse_init(spec):
    """"gauss:0.5" -> ("gauss", 0.5); "orthogonal" -> ("orthogonal", 1.0)."""
    name, _, scale = str(spec).partition(":")
    if name not in SCHEMES:
        raise ValueError(f"unknown init scheme {name!r} in {spec!r}: choose from {SCHEMES}")
    if name == "default" and scale:
        raise ValueError(f"init 'default' takes no scale, got {spec!r}")
    try:
        value = float(scale) if scale else 1.0
    except ValueError:
        raise ValueError(f"init scale must be a number, got {spec!r}") from None
    if not value > 0:
        raise ValueError(f"init scale must be positive, got {spec!r}")
    return name, value


def init_weights(net, spec, rng):
    """Redraw Wx, Wh and zero the biases of a cell, or of every cell of a Stack, in place by
    the scheme `spec`; returns `net`."""
    name, s = parse_init(spec)
    if name == "default":
        return net
    cells = [c for row in net.cells for c in row] if isinstance(net, Stack) else [net]
    for cell in cells:
        _init_cell(cell, name, s, rng)
    return net


def _init_cell(cell, name, s, rng):
    """One cell's Wx (D, G·H), Wh (H, G·H) by the scheme `name` at scale s; biases to 0."""
    D, H = cell.input_size, cell.hidden_size
    G = cell.params["Wh"].shape[1] // H                   # gate blocks: 4 LSTM, 3 GRU, 1 RNN
    if name == "gauss":
        Wx = rng.standard_normal((D, G * H)) * s / np.sqrt(D)
        Wh = rng.standard_normal((H, G * H)) * s / np.sqrt(H)
    elif name == "uniform":
        k = s / np.sqrt(H)
        Wx = rng.uniform(-k, k, (D, G * H))
        Wh = rng.uniform(-k, k, (H, G * H))
    elif name == "orthogonal":
        Wx = s * orthogonal_init(rng, (D, G * H))
        Wh = s * orthogonal_init(rng, (H, G * H))
    else:  # identity
        Wx = rng.standard_normal((D, G * H)) / np.sqrt(D)
        Wh = s * np.tile(np.eye(H), (1, G))
    cell.params["Wx"][...] = Wx
    cell.params["Wh"][...] = Wh
    for bias in ("b", "b_hn"):                            # b_hn: the GRU's (reset after)
        if bias in cell.params:
            cell.params[bias][...] = 0.0
