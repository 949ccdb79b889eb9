"""How far could retraining go? Gradual magnitude pruning with fine-tuning on labelled data, as a
reference point for post-training methods at the same sparsity (it uses labels and many epochs,
which post-training pruning does not).

The model is viewed in torch through onnxprune's torch view; only its prunable weights are trained,
masked after every step; each sparsity's weights are written back into the ONNX graph and measured in
ONNX Runtime on the test data. Sparsities are reached in the order given, each starting from the last.

Run: ``.venv/bin/python tools/retrain_bound.py models/mlp.onnx --train models/mlp_calib.npz
--test models/mlp_test.npz`` (``--train mnist-5k`` takes the 5,000 bundled MNIST training images).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads slow shared cores

import numpy as np
import torch
import torch.nn.functional as F

from onnxprune.graph.canonical import canonicalize
from onnxprune.data import Dataset, load_data
from onnxprune.validate.evaluation import evaluate
from onnxprune.graph.io import load_model
from onnxprune.methods.unstructured.magnitude import magnitude_masks
from onnxprune.graph.prunable import find_prunable, read_weights
from onnxprune.report import table
from onnxprune.view.torchview import build_torch_view
from onnxprune.graph.edit import replace_initializers
from onnxprune.graph.io import save_model

sys.path.insert(0, str(Path(__file__).resolve().parent))


def training_data(spec: str, model) -> Dataset:
    """``spec`` as a data file, or 'mnist-5k': the bundled MNIST training images in the model's input shape."""
    if spec != "mnist-5k":
        return load_data(Path(spec), model)
    from mnist import load_train

    images, labels = load_train()
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return Dataset({model.graph.input[0].name: images.reshape(len(images), *dims)}, labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--train", required=True, help="labelled .npz, or mnist-5k")
    parser.add_argument("--test", required=True, help="labelled .npz measured in ONNX Runtime")
    parser.add_argument("--sparsities", default="0.5,0.7,0.8,0.85,0.9")
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs after each pruning step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    model = canonicalize(load_model(args.model)).model
    train, test = training_data(args.train, model), load_data(Path(args.test), model)
    if train.labels is None:
        raise SystemExit("--train needs labels")
    names = [w.name for w in find_prunable(model)]
    view = build_torch_view(model, names)
    inputs = torch.from_numpy(np.ascontiguousarray(train.inputs[view.input_names[0]]))
    labels = torch.from_numpy(train.labels)
    params = [view.params[n] for n in names]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    rows = [["dense", None, 100 * evaluate(args.model, test).accuracy]]
    with tempfile.TemporaryDirectory() as folder:
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            current = {n: view.params[n].detach().numpy().copy() for n in names}
            masks = {n: torch.from_numpy(m) for n, m in magnitude_masks(current, sparsity, "global").items()}
            with torch.no_grad():
                for n in names:
                    view.params[n].mul_(masks[n])
            pruned_accuracy = _accuracy(model, view, names, test, Path(folder) / f"pruned_{sparsity}.onnx")
            for _ in range(args.epochs):
                order = torch.randperm(len(inputs))
                for start in range(0, len(inputs), 64):
                    batch = order[start:start + 64]
                    optimizer.zero_grad()
                    F.cross_entropy(view(inputs[batch])[0], labels[batch]).backward()
                    optimizer.step()
                    with torch.no_grad():
                        for n in names:
                            view.params[n].mul_(masks[n])
            rows.append([f"{sparsity:g}", pruned_accuracy,
                         _accuracy(model, view, names, test, Path(folder) / f"retrained_{sparsity}.onnx")])
    print(table(["sparsity", "magnitude, no retraining (%)", f"after {args.epochs} epochs (%)"], rows,
                title=f"{args.model}: gradual magnitude pruning + fine-tuning on {args.train} "
                      f"({len(inputs)} labelled samples), ONNX Runtime accuracy on {args.test}"))


def _accuracy(model, view, names: list[str], test: Dataset, path: Path) -> float:
    """ORT accuracy of ``model`` with the view's current weights written back."""
    dtypes = {n: w.dtype for n, w in read_weights(model, names).items()}
    weights = {n: view.params[n].detach().numpy().astype(dtypes[n]) for n in names}
    save_model(replace_initializers(model, weights), path)
    return 100 * evaluate(path, test).accuracy


if __name__ == "__main__":
    main()
