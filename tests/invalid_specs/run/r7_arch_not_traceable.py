# expect: model.arch
# A custom graph model whose forward branches on its data: torch.fx cannot trace it, so its
# channel dependency groups are unknown and structured pruning is refused (with fx's reason)
# before Ray starts. The arch is this file's own module, importable from its folder.
import torch
from torch import nn

from dlopt import Experiment, Model, Prune


class Branchy(nn.Module):
    def __init__(self, spec, input_shape, out_features):
        super().__init__()
        self.a = nn.Linear(input_shape[-1], 16)
        self.b = nn.Linear(16, 16)
        self.head = nn.Linear(16, out_features)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if h.sum() > 0:  # data-dependent control flow
            h = h + torch.relu(self.b(h))
        return self.head(h)


def branchy(spec, input_shape, out_features):
    return Branchy(spec, input_shape, out_features)


experiment = Experiment(name="bad-run", epochs=1,
                        model=Model(arch="r7_arch_not_traceable:branchy"),
                        compression=[Prune(sparsity=0.5, scope="layer", structured=True)])
