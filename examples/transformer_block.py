"""A transformer encoder block on a small sequence-classification task.

One example is a sequence of LENGTH tokens from a vocabulary of VOCAB, given
as one-hot rows (``tokens``, LENGTH x VOCAB); it belongs to class 1 when its
first token occurs again later in the sequence, which a model can tell only
by comparing positions: attention. The block is the post-norm encoder layer
of "Attention Is All You Need" (PyTorch's ``TransformerEncoderLayer`` with
``norm_first=False``), without dropout:

    X = tokens E + P                                     (token and position embeddings)
    head_h = softmax(X Wq_h (X Wk_h)^T / sqrt(d_head), rows) X Wv_h     (h = 1, 2)
    A = layer_norm(X + hstack(head_1, head_2) Wo + bo)
    H = layer_norm(A + relu(A W1 + b1) W2 + b2)
    logits = mean of the rows of H, times Wc, plus bc

The layer norm is written as a textbook writes it, each row's mean and
variance and ``(x - mean) / sqrt(var + eps)``, then a learned gain and bias.
Row vectors (``bo``, ``gain``, ...) are added to every row with
``sg.broadcast_to``. The loss is the cross-entropy of the logits against a
one-hot class.
"""

import sympy as sp

import symgrad as sg

LENGTH, VOCAB, WIDTH, HEADS, HIDDEN, CLASSES = 6, 4, 8, 2, 16, 2
HEAD = WIDTH // HEADS
EPS = sp.Rational(1, 10**5)  # PyTorch's layer_norm default

tokens = sp.MatrixSymbol("tokens", LENGTH, VOCAB)
target = sp.MatrixSymbol("target", 1, CLASSES)
E = sp.MatrixSymbol("E", VOCAB, WIDTH)
P = sp.MatrixSymbol("P", LENGTH, WIDTH)
Wq = [sp.MatrixSymbol(f"Wq{h}", WIDTH, HEAD) for h in range(HEADS)]
Wk = [sp.MatrixSymbol(f"Wk{h}", WIDTH, HEAD) for h in range(HEADS)]
Wv = [sp.MatrixSymbol(f"Wv{h}", WIDTH, HEAD) for h in range(HEADS)]
Wo, bo = sp.MatrixSymbol("Wo", WIDTH, WIDTH), sp.MatrixSymbol("bo", 1, WIDTH)
gain1, bias1 = sp.MatrixSymbol("gain1", 1, WIDTH), sp.MatrixSymbol("bias1", 1, WIDTH)
W1, b1 = sp.MatrixSymbol("W1", WIDTH, HIDDEN), sp.MatrixSymbol("b1", 1, HIDDEN)
W2, b2 = sp.MatrixSymbol("W2", HIDDEN, WIDTH), sp.MatrixSymbol("b2", 1, WIDTH)
gain2, bias2 = sp.MatrixSymbol("gain2", 1, WIDTH), sp.MatrixSymbol("bias2", 1, WIDTH)
Wc, bc = sp.MatrixSymbol("Wc", WIDTH, CLASSES), sp.MatrixSymbol("bc", 1, CLASSES)


def rows(v, cols):
    """The row vector ``v`` added to every one of the LENGTH rows."""
    return sg.broadcast_to(v, (LENGTH, cols))


def layer_norm(Z, gain, bias):
    """Each row of Z scaled to mean 0 and variance 1, then times ``gain`` plus ``bias``."""
    mean = sg.mean(Z, axis=1)  # LENGTH x 1
    centered = Z - sg.broadcast_to(mean, (LENGTH, WIDTH))
    variance = sg.mean(sp.HadamardPower(centered, 2), axis=1)  # the biased variance, as layer norm takes it
    inverse_std = sg.elementwise(lambda v: 1 / sp.sqrt(v + EPS), variance)
    normalized = sp.HadamardProduct(centered, sg.broadcast_to(inverse_std, (LENGTH, WIDTH)))
    return sp.HadamardProduct(normalized, rows(gain, WIDTH)) + rows(bias, WIDTH)


X = tokens * E + P
heads = [sg.softmax(X * Wq[h] * (X * Wk[h]).T / sp.sqrt(HEAD), axis=1) * (X * Wv[h]) for h in range(HEADS)]
A = layer_norm(X + sg.hstack(*heads) * Wo + rows(bo, WIDTH), gain1, bias1)
H = layer_norm(A + sg.relu(A * W1 + rows(b1, HIDDEN)) * W2 + rows(b2, WIDTH), gain2, bias2)
logits = sp.OneMatrix(1, LENGTH) * H * Wc / LENGTH + bc

PARAMS = [E, P, *Wq, *Wk, *Wv, Wo, bo, gain1, bias1, W1, b1, W2, b2, gain2, bias2, Wc, bc]
transformer_block = sg.Model("transformer_block", loss=sg.cross_entropy(logits, target), params=PARAMS,
                             inputs=[tokens, target], outputs={"logits": logits})
