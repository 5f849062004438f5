"""An Elman recurrent network unrolled over 20 steps, its state update written on [h; x].

h_{t+1} = tanh(W [h_t; x_t] + b), with h_0 = 0 and x_t the column t of the
input sequence X (a slice, X[:, t:t+1]); the prediction is a linear read-out
of the last state, the loss its squared error. ``sg.vstack`` concatenates the
state and the input into one column, so one weight matrix W acts on both.
The unrolled graph shares W and b across the 20 steps; their gradients add up
the contributions of every step (backpropagation through time).
"""

import sympy as sp

import symgrad as sg

inputs, hidden, steps = 2, 6, 20
X = sp.MatrixSymbol("X", inputs, steps)
y = sp.Symbol("y")
W = sp.MatrixSymbol("W", hidden, hidden + inputs)
b = sp.MatrixSymbol("b", hidden, 1)
w_out = sp.MatrixSymbol("w_out", 1, hidden)
c = sp.Symbol("c")

h = sp.ZeroMatrix(hidden, 1)
for t in range(steps):
    h = (W * sg.vstack(h, X[:, t:t + 1]) + b).applyfunc(sp.tanh)
prediction = sg.scalar(w_out * h) + c

elman_rnn = sg.Model("elman_rnn", loss=(prediction - y) ** 2, params=[W, b, w_out, c], inputs=[X, y],
                     outputs={"prediction": prediction})
