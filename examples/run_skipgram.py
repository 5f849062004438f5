"""Train examples/skipgram.py on a generated corpus; check it against PyTorch float64.

The corpus is made of sentences from a few templates ("the red cat eats
bread near the river", "a farmer sees the white goat in the field", ...)
whose slots are filled at random from word classes: animals, foods, colors,
places, people. Words of one class appear in the same contexts, so the
learned vectors should put them together; the nearest-neighbour table (by
cosine similarity of the center vectors) and the share of words whose
nearest neighbour is of their own class show whether they do.

The loss and gradients of a few pairs are compared with PyTorch float64
first, written there with integer indexing into the tables and
``F.logsigmoid``; then the tables train with Adam through ``train_epoch``,
new negatives drawn every epoch from the unigram distribution to the 3/4.
"""

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import symgrad as sg

CLASSES = {
    "animal": "cat dog horse cow sheep goat".split(),
    "food": "bread apple cheese rice soup corn".split(),
    "color": "red green blue yellow white black".split(),
    "place": "city village river forest garden field".split(),
    "person": "farmer child teacher doctor baker sailor".split(),
}
TEMPLATES = [
    "the color animal eats food near the place",
    "a person sees the color animal in the place",
    "the person cooks food and food in the place",
    "a color animal likes the person with food",
]
FUNCTION_WORDS = "the a eats near sees in cooks and likes with".split()
WORDS = [w for words in CLASSES.values() for w in words] + FUNCTION_WORDS
INDEX = {w: k for k, w in enumerate(WORDS)}
CLASS_OF = {w: c for c, words in CLASSES.items() for w in words}
WINDOW = 2

here = Path(__file__).parent
(model,) = sg.load_model(here / "skipgram.py")
start = time.perf_counter()
net = sg.compile(model, out_dir=here.parent / "generated")
print(f"built in {time.perf_counter() - start:.2f} s")
vocab, dim = (int(d) for d in model.params[0].shape)
negative = int(model.inputs[2].shape[1])
assert vocab == len(WORDS), (vocab, len(WORDS))


def corpus(sentences, rng):
    """Word indices of ``sentences`` sentences, each a list."""
    out = []
    for _ in range(sentences):
        words = [rng.choice(CLASSES[w]) if w in CLASSES else w for w in rng.choice(TEMPLATES).split()]
        out.append([INDEX[w] for w in words])
    return out


def pairs(sentences):
    """(center, context) index pairs within WINDOW words of each other in a sentence."""
    found = [(s[i], s[j]) for s in sentences for i in range(len(s))
             for j in range(max(0, i - WINDOW), min(len(s), i + WINDOW + 1)) if j != i]
    return np.array(found)


def one_hot_data(centers, contexts, noise):
    """The model's inputs: one-hot columns (N x VOCAB x 1) and negatives (N x VOCAB x NEGATIVE)."""
    eye = np.eye(vocab)
    return {"center": eye[centers][:, :, None], "context": eye[contexts][:, :, None],
            "negatives": np.ascontiguousarray(eye[noise].transpose(0, 2, 1))}


def torch_loss_and_grads(centers, contexts, noise, p):
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    v_c = t["V_in"][torch.tensor(centers)]  # (N, DIM)
    u_o = t["U_out"][torch.tensor(contexts)]
    u_k = t["U_out"][torch.tensor(noise)]  # (N, NEGATIVE, DIM)
    loss = -(F.logsigmoid((u_o * v_c).sum(1)) + F.logsigmoid(-(u_k @ v_c[:, :, None])[:, :, 0]).sum(1)).mean()
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in t.items()}


rng = np.random.default_rng(0)
train = pairs(corpus(500, rng))
counts = np.bincount(train[:, 0], minlength=vocab)
noise_p = counts ** 0.75 / np.sum(counts ** 0.75)


def draw_negatives(n):
    return rng.choice(vocab, size=(n, negative), p=noise_p)


check = {"V_in": rng.normal(0, 0.5, (vocab, dim)), "U_out": rng.normal(0, 0.5, (vocab, dim))}
noise = draw_negatives(6)
loss, grads = net.value_and_grad(**one_hot_data(train[:6, 0], train[:6, 1], noise), **check)
t_loss, t_grads = torch_loss_and_grads(train[:6, 0], train[:6, 1], noise, check)
worst = max(np.max(np.abs(grads[k] - t_grads[k])) for k in check)
print(f"vs PyTorch float64 on 6 pairs: loss {abs(loss - t_loss):.1e}, worst gradient difference {worst:.1e}")

params = {"V_in": rng.uniform(-0.5 / dim, 0.5 / dim, (vocab, dim)), "U_out": np.zeros((vocab, dim))}
state, start = None, time.perf_counter()
for epoch in range(1, 9):
    data = one_hot_data(train[:, 0], train[:, 1], draw_negatives(len(train)))
    losses, state = net.train_epoch(params, data, 64, 0.01, "adam", shuffle=rng, state=state)
    if epoch in (1, 8):
        print(f"epoch {epoch}: mean loss {np.mean(losses):.4f}")
print(f"8 epochs over {len(train)} pairs in {time.perf_counter() - start:.2f} s")

vectors = params["V_in"] / np.linalg.norm(params["V_in"], axis=1, keepdims=True)
similarity = vectors @ vectors.T
np.fill_diagonal(similarity, -np.inf)
nearest = np.argsort(-similarity, axis=1)[:, :3]
print("\nword       nearest neighbours (cosine)")
for c, words in CLASSES.items():
    for w in words[:2]:
        k = INDEX[w]
        print(f"{w:10s} " + ", ".join(f"{WORDS[j]} {similarity[k, j]:.2f}" for j in nearest[k]))
same = np.mean([CLASS_OF.get(WORDS[nearest[INDEX[w], 0]]) == c for c, words in CLASSES.items() for w in words])
print(f"\nwords whose nearest neighbour is of their own class: {same:.0%} of {len(CLASS_OF)}")
