"""A character-level LSTM language model, its step written once and run by ``sg.scan``.

Each example is a chunk of at most ``steps`` characters of a sentence (one-hot rows of
``X``), the characters that follow them (``Y``), its length ``n`` (the chunks of a
sentence's end are shorter: steps at t >= n leave the state as it is and add no loss)
and the LSTM state ``(h0, c0)`` the previous chunk of the same sentence ended in, so a
sentence longer than a chunk is trained by truncated backpropagation through time: the
gradient flows through the steps of one chunk, the state through all of them. The loss
of an example is the cross-entropy of its next characters, summed over its steps.
"""

import sympy as sp

import symgrad as sg

#: the characters: a space, a full stop, a..z
ALPHABET = " ." + "abcdefghijklmnopqrstuvwxyz"
vocab, hidden, steps = len(ALPHABET), 24, 16

X = sp.MatrixSymbol("X", steps, vocab)      # the chunk's characters, one-hot rows
Y = sp.MatrixSymbol("Y", steps, vocab)      # the characters that follow them
n = sp.Symbol("n")                          # how many steps of the chunk are characters
h0, c0 = sp.MatrixSymbol("h0", hidden, 1), sp.MatrixSymbol("c0", hidden, 1)
W = sp.MatrixSymbol("W", 4 * hidden, hidden + vocab)   # the four gates on [h; x_t]
b = sp.MatrixSymbol("b", 4 * hidden, 1)
U, d = sp.MatrixSymbol("U", vocab, hidden), sp.MatrixSymbol("d", vocab, 1)


def step(state, rows):
    """One character: the LSTM update of (h, c) by x_t, and the cross-entropy of the next one."""
    h, c = state
    x_t, y_t = rows
    z = W * sg.vstack(h, x_t) + b
    i, f = sg.sigmoid(z[:hidden, :]), sg.sigmoid(z[hidden:2 * hidden, :])
    g, o = z[2 * hidden:3 * hidden, :].applyfunc(sp.tanh), sg.sigmoid(z[3 * hidden:, :])
    c = sp.HadamardProduct(f, c) + sp.HadamardProduct(i, g)
    h = sp.HadamardProduct(o, c.applyfunc(sp.tanh))
    return (h, c), sg.cross_entropy(U * h + d, y_t)


(h, c), losses = sg.scan(step, (h0, c0), sequences=(X, Y), length=n)

lstm_lm = sg.Model("lstm_lm", loss=sg.sum(losses), params=[W, b, U, d], inputs=[X, Y, n, h0, c0],
                   outputs={"h": h, "c": c, "losses": losses}, reduce="sum")
