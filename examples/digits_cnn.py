"""A small convolutional network on the 8x8 digits.

An image is an 8x8 matrix (one channel). conv(3x3, 16 channels, padding 1) ->
relu -> 2x2 max pooling gives 16 channels of 4x4, stacked as a 64x4 matrix
(channel c in rows 4c .. 4c+3); a 4x4 convolution to 10 channels without
padding, which covers each channel whole, is the dense layer to the 10
logits. The backward pass is the transposed convolutions, the weight
correlations and the pooling's routing, one line each in ``symgrad show``.
"""

import sympy as sp

import symgrad as sg

CHANNELS = 16

x = sp.MatrixSymbol("x", 8, 8)
target = sp.MatrixSymbol("target", 10, 1)
w1 = sp.MatrixSymbol("w1", CHANNELS * 3, 3)  # (out 16) x (in 1) x 3 x 3, rows merged
b1 = sp.MatrixSymbol("b1", CHANNELS, 1)
w2 = sp.MatrixSymbol("w2", 10 * CHANNELS * 4, 4)  # (out 10) x (in 16) x 4 x 4
b2 = sp.MatrixSymbol("b2", 10, 1)

h = sg.relu(sg.conv2d(x, w1, b1, padding=1, out_channels=CHANNELS))  # 128 x 8
pooled = sg.max_pool2d(h, 2, channels=CHANNELS)  # 64 x 4
logits = sg.conv2d(pooled, w2, b2, in_channels=CHANNELS, out_channels=10)  # 10 x 1
digits_cnn = sg.Model(
    "digits_cnn",
    loss=sg.cross_entropy(logits, target),
    params=[w1, b1, w2, b2],
    inputs=[x, target],
    outputs={"logits": logits},
)
