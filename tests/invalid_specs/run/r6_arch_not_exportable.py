# expect: model.arch
# A custom arch whose forward uses an op ONNX cannot export (aten::kthvalue): quantizing it
# is refused before Ray starts. The arch is this file's own module, importable from its folder.
import torch
from torch import nn

from dlopt import Experiment, Model, Quantize


class KthNet(nn.Module):
    def __init__(self, spec, input_shape, out_features):
        super().__init__()
        self.fc = nn.Linear(input_shape[-1], out_features)

    def forward(self, x):
        y = self.fc(x)
        return y - torch.kthvalue(y, 2, dim=1, keepdim=True)[0]


def kth_net(spec, input_shape, out_features):
    return KthNet(spec, input_shape, out_features)


experiment = Experiment(name="bad-run", epochs=1,
                        model=Model(arch="r6_arch_not_exportable:kth_net"),
                        compression=[Quantize(method="dynamic")])
