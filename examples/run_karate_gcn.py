"""Train examples/karate_gcn.py from the two leaders' labels; check it against PyTorch float64.

Prints the loss and gradients' agreement with PyTorch at the starting point,
then the share of the 34 members whose faction the trained network predicts
(and, where NetworkX is installed, checks the edge list against its copy).
"""

from pathlib import Path

import numpy as np
import torch

import symgrad as sg

here = Path(__file__).parent
(model,) = sg.load_model(here / "karate_gcn.py")
net = sg.compile(model, out_dir=here.parent / "generated")
namespace = {}
exec((here / "karate_gcn.py").read_text(), namespace)  # the graph and the factions, as the model file made them
A_hat, faction, labeled = np.array(namespace["A_hat"], float), namespace["FACTION"], namespace["LABELED"]
nodes, hidden = A_hat.shape[0], namespace["HIDDEN"]

try:
    import networkx as nx
except ImportError:
    nx = None
if nx is not None:
    graph = nx.karate_club_graph()
    assert sorted(tuple(sorted(e)) for e in graph.edges()) == namespace["EDGES"]
    assert [int(graph.nodes[k]["club"] == "Officer") for k in range(nodes)] == list(faction)

labels = np.zeros((nodes, 2))
for k in labeled:
    labels[k, faction[k]] = 1
rng = np.random.default_rng(0)
params = {"W1": rng.normal(0, 1, (nodes, hidden)), "W2": rng.normal(0, 1, (hidden, 2))}


def torch_loss(p):
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    a = torch.tensor(A_hat)
    z = a @ torch.relu(a @ t["W1"]) @ t["W2"]
    loss = -(torch.tensor(labels) * torch.log_softmax(z, dim=1)).sum() / len(labeled)
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in t.items()}


loss, grads = net.value_and_grad(labels=labels, **params)
t_loss, t_grads = torch_loss(params)
assert abs(loss - t_loss) < 1e-12 and all(np.max(np.abs(grads[k] - t_grads[k])) < 1e-12 for k in params)
print(f"loss {loss:.6f} and gradients as PyTorch float64's")

for step in range(300):
    loss, grads = net.value_and_grad(labels=labels, **params)
    for k in params:
        params[k] -= 0.05 * grads[k]
logits = net.forward(labels=labels, **params)["logits"]
predicted = logits.argmax(axis=1)
print(f"training loss {loss:.4f}; factions predicted right: {np.mean(predicted == faction):.0%} of {nodes} members")
