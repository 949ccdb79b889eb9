"""Train the two bundled MNIST models on CPU and export them to ONNX with calibration and test data.

Run: ``.venv/bin/python tools/train_models.py`` (reads ``models/data/``, writes ``models/*.onnx``
and ``models/*_{calib,test}.npz``). Seeds are fixed and deterministic algorithms are enforced,
so a rerun on the same torch build reproduces the same weights.
"""

from __future__ import annotations

import os

# Sleep rather than spin in OpenMP barriers: on shared cores spinning threads slow training ~8x.
# Read once when torch loads, so it is set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from mnist import load_test, load_train

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
SEED = 0
OPSET = 17
THREADS = 2
CALIB_PER_CLASS = 100


class MLPNet(nn.Module):
    """The 784-40-20-10 MLPNet used by the WoodFisher and CHITA papers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 40)
        self.fc2 = nn.Linear(40, 20)
        self.fc3 = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class ResidualBlock(nn.Module):
    """Two 3x3 conv+BN layers with a residual add; a strided 1x1 conv+BN shortcut when shapes change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCNN(nn.Module):
    """Small ResNet for 28x28 digits: stem, three residual stages (28x28, 14x14, 7x7), GAP, linear."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.stage1 = ResidualBlock(widths[0], widths[0], 1)
        self.stage2 = ResidualBlock(widths[0], widths[1], 2)
        self.stage3 = ResidualBlock(widths[1], widths[2], 2)
        self.fc = nn.Linear(widths[2], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def make_deterministic() -> None:
    """Fixed seeds, deterministic kernels and a fixed thread count for reproducible CPU training."""
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each [B,1,28,28] image by up to ``max_shift`` pixels per axis, filling with zeros."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4)[:, 0]
    offsets = torch.randint(0, 2 * max_shift + 1, (2, batch), generator=generator)
    rows = offsets[0, :, None] + torch.arange(height)
    cols = offsets[1, :, None] + torch.arange(width)
    index = torch.arange(batch)[:, None, None]
    return padded[index, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float,
          batch_size: int, max_shift: int) -> None:
    """AdamW with a one-cycle schedule; ``images`` are [N,1,28,28], flattened for the MLP.

    Convolutional models train in channels-last layout (faster on CPU) and are returned contiguous.
    """
    generator = torch.Generator().manual_seed(SEED)
    steps = epochs * -(-len(images) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    flatten = isinstance(model, MLPNet)
    layout = torch.contiguous_format if flatten else torch.channels_last
    model.to(memory_format=layout).train()
    for epoch in range(epochs):
        shifted = random_shift(images, max_shift, generator) if max_shift else images
        shifted = shifted.flatten(1) if flatten else shifted.contiguous(memory_format=layout)
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(images), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(model(shifted[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        print(f"  epoch {epoch + 1}/{epochs}: train loss {total / len(images):.4f}")
    model.to(memory_format=torch.contiguous_format).eval()


def balanced_indices(labels: np.ndarray, per_class: int) -> np.ndarray:
    """``per_class`` indices of every label, drawn with a fixed seed, in a seeded shuffled order."""
    rng = np.random.default_rng(SEED)
    picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return rng.permutation(np.concatenate(picked))


def export(model: nn.Module, example: torch.Tensor, path: Path) -> onnx.ModelProto:
    """Legacy-exporter ONNX with dynamic batch ``N`` and BatchNormalization kept as separate nodes.

    EVAL mode would fold BN into the preceding Conv; PRESERVE on a model in eval mode keeps the BN
    nodes (inference form, running statistics). Constant folding changes nothing in these graphs.
    """
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    exported = own_initializers(onnx.load(str(path)))
    onnx.save(exported, str(path))
    onnx.checker.check_model(exported, full_check=True)
    return exported


def own_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer under the output name.

    The exporter shares initializers with equal values through Identity nodes. The two BN biases
    feeding a projection-shortcut Add get identical gradients and stay equal, so without this step
    one BN would read its bias through the other's; each node gets its own tensor instead.
    """
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def check_cnn_graph(model: onnx.ModelProto) -> None:
    """Fail unless the CNN graph shows Conv -> BatchNormalization -> Relu chains and residual Adds."""
    producer = {out: node for node in model.graph.node for out in node.output}
    chains = 0
    for node in model.graph.node:
        if node.op_type == "Relu":
            bn = producer.get(node.input[0])
            if bn is not None and bn.op_type == "BatchNormalization":
                conv = producer.get(bn.input[0])
                chains += conv is not None and conv.op_type == "Conv"
    adds = sum(node.op_type == "Add" for node in model.graph.node)
    if chains == 0 or adds == 0:
        raise RuntimeError(f"exported CNN lost its structure: {chains} Conv-BN-Relu chains, {adds} Adds")


def save_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one model data file: float32 ``input`` (samples on axis 0) and int64 ``labels``."""
    np.savez_compressed(path, input=images.astype(np.float32), labels=labels.astype(np.int64))


def ort_session(model_path: Path) -> ort.InferenceSession:
    """A CPU ONNX Runtime session limited to the shared thread count."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def ort_accuracy(model_path: Path, data_path: Path, batch_size: int = 1000) -> float:
    """Top-1 accuracy of the exported model in ONNX Runtime on a data file, in batches to bound memory."""
    session = ort_session(model_path)
    with np.load(data_path) as data:
        inputs, labels = data["input"], data["labels"]
    correct = 0
    for start in range(0, len(inputs), batch_size):
        logits = session.run(["logits"], {"input": inputs[start:start + batch_size]})[0]
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / len(inputs)


def max_ort_difference(model: nn.Module, model_path: Path, inputs: np.ndarray) -> float:
    """Largest absolute logit difference between torch and ONNX Runtime on ``inputs``."""
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    return float(np.abs(ort_session(model_path).run(["logits"], {"input": inputs})[0] - expected).max())


def build(name: str, model: nn.Module, shape: tuple[int, ...], train_data: tuple[np.ndarray, np.ndarray],
          test_data: tuple[np.ndarray, np.ndarray], epochs: int, lr: float, batch_size: int,
          max_shift: int) -> None:
    """Train one model, export it, write its calibration/test files and report ORT accuracy."""
    train_images, train_labels = train_data
    test_images, test_labels = test_data
    weights = sum(p.numel() for p in model.parameters())
    print(f"{name}: {weights} parameters; training {epochs} epochs, batch {batch_size}")
    started = time.perf_counter()
    train(model, torch.from_numpy(train_images[:, None]), torch.from_numpy(train_labels),
          epochs, lr, batch_size, max_shift)
    print(f"{name}: trained in {time.perf_counter() - started:.1f} s")

    model_path = MODELS_DIR / f"{name}.onnx"
    exported = export(model, torch.zeros((1, *shape)), model_path)
    ops = Counter(node.op_type for node in exported.graph.node)
    print(f"{name}: exported {model_path.name}: {dict(sorted(ops.items()))}")
    if name == "cnn":
        check_cnn_graph(exported)

    calib = balanced_indices(train_labels, CALIB_PER_CLASS)
    save_npz(MODELS_DIR / f"{name}_calib.npz", train_images[calib].reshape(-1, *shape), train_labels[calib])
    test_path = MODELS_DIR / f"{name}_test.npz"
    save_npz(test_path, test_images.reshape(-1, *shape), test_labels)
    difference = max_ort_difference(model, model_path, test_images[:256].reshape(-1, *shape))
    print(f"{name}: max |torch - ORT| logit difference {difference:.2e}")
    print(f"{name}: dense test accuracy in ONNX Runtime: {ort_accuracy(model_path, test_path):.4f}")


def main() -> None:
    """Train and export the MLP and the CNN."""
    make_deterministic()
    train_data, test_data = load_train(), load_test()
    build("mlp", MLPNet(), (784,), train_data, test_data, epochs=60, lr=3e-3, batch_size=64, max_shift=1)
    torch.manual_seed(SEED)  # the CNN's initial weights do not depend on the MLP run
    build("cnn", ResNetCNN(), (1, 28, 28), train_data, test_data, epochs=10, lr=3e-3, batch_size=128,
          max_shift=2)


if __name__ == "__main__":
    main()
