"""A pairwise ranking loss for a linear scoring model.

Each example is a query with POSITIVE relevant items (the first rows of X)
and NEGATIVE irrelevant ones (the rest), each item a row of FEATURES numbers.
The scores are s = X w; the loss is the mean hinge max(0, margin - s_pos + s_neg)
over every (positive, negative) pair: a double sum, one C loop nest whatever
the numbers of items, whose gradient is a loop too. The scores are computed
once, outside the loops (a product of the whole matrix): the loops read their
elements.
"""

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

import symgrad as sg

POSITIVE, NEGATIVE, FEATURES = 5, 20, 6
MARGIN = 1

X = sp.MatrixSymbol("X", POSITIVE + NEGATIVE, FEATURES)
w = sp.MatrixSymbol("w", FEATURES, 1)
i, j = sp.symbols("i j", integer=True)

scores = X * w
# MatrixElement keeps s[i, 0] an element of the product (scores[i, 0] would make SymPy write
# the product out as a sum over the features, which symgrad would read as an inner loop)
hinge = sp.Max(0, MARGIN - MatrixElement(scores, i, 0) + MatrixElement(scores, POSITIVE + j, 0))
loss = sp.Sum(hinge, (i, 0, POSITIVE - 1), (j, 0, NEGATIVE - 1)) / (POSITIVE * NEGATIVE)
pairwise_ranking = sg.Model("pairwise_ranking", loss=loss, params=[w], inputs=[X], outputs={"scores": scores})
