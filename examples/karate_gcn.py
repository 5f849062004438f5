"""A two-layer graph convolutional network on Zachary's karate club.

The 34 members are the nodes of a graph of their 78 friendships (Zachary's
published edge list, numbered from 0 as in NetworkX's ``karate_club_graph``);
the club split into two factions ("Mr. Hi" 0, "Officer" 1). With
A_hat = D^-1/2 (A + I) D^-1/2, the normalized adjacency with self-loops, the
network is Z = A_hat relu(A_hat W1) W2 (the node features are the identity,
so A_hat X W1 = A_hat W1): each layer is a message passing step, a product
with A_hat. Only the two leaders' factions are given (a mask of labels); the
loss is their cross-entropy, and the network labels the other 32.
"""

import numpy as np
import sympy as sp

import symgrad as sg

EDGES = [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (0, 7), (0, 8), (0, 10), (0, 11), (0, 12), (0, 13),
         (0, 17), (0, 19), (0, 21), (0, 31), (1, 2), (1, 3), (1, 7), (1, 13), (1, 17), (1, 19), (1, 21), (1, 30),
         (2, 3), (2, 7), (2, 8), (2, 9), (2, 13), (2, 27), (2, 28), (2, 32), (3, 7), (3, 12), (3, 13), (4, 6),
         (4, 10), (5, 6), (5, 10), (5, 16), (6, 16), (8, 30), (8, 32), (8, 33), (9, 33), (13, 33), (14, 32),
         (14, 33), (15, 32), (15, 33), (18, 32), (18, 33), (19, 33), (20, 32), (20, 33), (22, 32), (22, 33),
         (23, 25), (23, 27), (23, 29), (23, 32), (23, 33), (24, 25), (24, 27), (24, 31), (25, 31), (26, 29),
         (26, 33), (27, 33), (28, 31), (28, 33), (29, 32), (29, 33), (30, 32), (30, 33), (31, 32), (31, 33),
         (32, 33)]
FACTION = np.array([int(c) for c in "0000000001000011001010111111111111"])

NODES, HIDDEN, LABELED = 34, 4, (0, 33)
adjacency = np.eye(NODES)
for a, b in EDGES:
    adjacency[a, b] = adjacency[b, a] = 1
scale = 1 / np.sqrt(adjacency.sum(axis=1))
A_hat = sp.Matrix(np.round(scale[:, None] * adjacency * scale[None, :], 12))  # numbers: a constant table

W1 = sp.MatrixSymbol("W1", NODES, HIDDEN)
W2 = sp.MatrixSymbol("W2", HIDDEN, 2)
labels = sp.MatrixSymbol("labels", NODES, 2)  # one-hot rows for the labeled members, zeros elsewhere

hidden = sg.relu(A_hat * W1)
logits = A_hat * hidden * W2
loss = sg.sum(sg.cross_entropy(logits, labels, axis=1)) / len(LABELED)
karate_gcn = sg.Model("karate_gcn", loss=loss, params=[W1, W2, labels], wrt=[W1, W2], outputs={"logits": logits})
