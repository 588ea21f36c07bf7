"""Deep Compression's LeNet-300-100 recipe on digits: gradual global pruning to 90%, then int8.

Han et al. (2015, 2016) pruned LeNet-300-100 on MNIST 12x (40x with quantization and
Huffman coding) at no loss of accuracy. Here the same 300-100 MLP on sklearn's 8x8
digits (64 inputs; point `data.dataset="mnist"` and `data.root` at a local MNIST copy for
the 784-input original) is pruned by weight magnitude across all layers at once, along
Zhu & Gupta's cubic schedule from epoch 5 to 30, fine-tuned to epoch 60, then quantized
to int8 (dynamic activations, torchao). The saved artifact stores only the surviving
int8 weights (bitmask or relative indices + values, safetensors) and is registered as
`digits-lenet300@champion`.

Run it: `dlopt run experiments/compress_lenet300.py`
(DDP: `--set resources.num_workers=2`; a sparsity sweep: `--set 'compression.0.sparsity=...'`
or edit `sparsity=tune.choice([0.9, 0.95])`.)
"""
from dlopt import (
    Data,
    Experiment,
    Model,
    Optimizer,
    Prune,
    Quantize,
    Regularization,
    Resources,
    Schedule,
    Search,
    Tracking,
)

experiment = Experiment(
    name="digits-lenet300-compress",
    seed=0,
    epochs=60,
    data=Data(dataset="digits", batch_size=64, val_fraction=0.2),
    model=Model(arch="mlp", hidden=[300, 100], activation="relu", init="kaiming_uniform"),
    optimizer=Optimizer(name="sgd", lr=0.1, momentum=0.9, nesterov=True),
    schedule=Schedule(name="cosine"),
    regularization=Regularization(label_smoothing=0.1),
    compression=[
        Prune(method="magnitude", scope="global", sparsity=0.9, schedule="gradual",
              start_epoch=5, end_epoch=30, frequency=10),
        Quantize(method="dynamic", dtype="int8"),
    ],
    search=Search(algorithm="random", num_samples=1, metric="compressed_val_accuracy", mode="max"),
    resources=Resources(num_workers=1, cpus_per_worker=1),
    tracking=Tracking(experiment="digits-compression", register_as="digits-lenet300",
                      alias="champion"),
)
