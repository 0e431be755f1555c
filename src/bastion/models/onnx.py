"""Black-box adapter for an ONNX graph, run through onnxruntime on the CPU.

ONNX files hold a computation graph and weights, not code: loading one executes nothing but the
graph's operators, so an ``.onnx`` file is a safe way to hand a model to bastion. Gradients are not
available through onnxruntime, hence ``white_box = False`` — use score- or decision-based attacks,
or export the model for torch (safetensors, TorchScript, ``torch.export``) for white-box ones.
"""

from __future__ import annotations

from os import PathLike

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from .base import BaseClassifier, Output

__all__ = ["OnnxClassifier"]

_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def _static(dims: list[object]) -> tuple[int, ...] | None:
    """The dims as ints when all are static positive integers, else None."""
    static = tuple(d for d in dims if isinstance(d, int) and d > 0)
    return static if len(static) == len(dims) else None


class OnnxClassifier(BaseClassifier):
    """Wrap an ONNX classifier (one float input of shape (N, *input_shape)) as a black-box Classifier.

    Args:
        path_or_bytes: path to a ``.onnx`` file, or the serialised model as bytes.
        bounds: valid input range.
        input_shape: shape of one input; inferred from the graph when its dims are static.
        n_classes: number of classes; inferred from the graph's output shape, or by one probe run.
        output: 'logits' or 'probabilities'; ``None`` detects it on the first batch (rows
            non-negative and summing to 1 mean probabilities).
        output_name: which graph output holds the scores; default the first float output of rank 2.

    A graph exported with a fixed batch size is run in chunks of that size (the last one padded).
    """

    white_box = False

    def __init__(
        self,
        path_or_bytes: str | PathLike[str] | bytes,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        input_shape: tuple[int, ...] | None = None,
        n_classes: int | None = None,
        output: Output | None = None,
        output_name: str | None = None,
    ) -> None:
        import onnxruntime as ort

        source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            where = "the given bytes" if isinstance(source, bytes) else repr(source)
            raise UsageError(f"onnxruntime cannot load {where} as an ONNX model: {str(exc).splitlines()[0]}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(f"{i.name}{list(i.shape)}" for i in inputs)
            raise UsageError(
                f"the ONNX graph has {len(inputs)} inputs ({names}); bastion needs exactly one image/feature input: "
                "re-export the model with the other inputs folded in as constants"
            )
        inp = inputs[0]
        if inp.type not in _DTYPES:
            raise UsageError(f"the ONNX graph's input {inp.name!r} has type {inp.type}; expected a float tensor")
        self.input_name, self._np_dtype = inp.name, _DTYPES[inp.type]
        dims = list(inp.shape)
        if not dims:
            raise UsageError(f"the ONNX graph's input {inp.name!r} is a scalar; expected (N, *input_shape)")
        graph_shape = _static(dims[1:])
        if input_shape is None:
            if graph_shape is None:
                raise UsageError(f"the ONNX input {inp.name!r} has dynamic dims {dims}: pass input_shape=")
            input_shape = graph_shape
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) != len(dims) - 1 or any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(dims[1:], input_shape)
        ):
            raise UsageError(f"input_shape {input_shape} does not match the ONNX input {inp.name!r} of shape {dims}")
        self._fixed_batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None

        outs = self.session.get_outputs()
        candidates = [o for o in outs if o.type in _DTYPES and len(o.shape) == 2]
        if output_name is not None:
            chosen = [o for o in outs if o.name == output_name]
            if not chosen:
                raise UsageError(f"the ONNX graph has no output {output_name!r} (outputs: {[o.name for o in outs]})")
        elif not candidates:
            raise UsageError(
                f"no ONNX output is a float tensor of shape (N, n_classes) (outputs: "
                f"{[(o.name, o.type, list(o.shape)) for o in outs]}); for skl2onnx models convert with "
                "options={'zipmap': False}"
            )
        self.output_name = (chosen[0] if output_name is not None else candidates[0]).name
        graph_classes = next((o.shape[1] for o in outs if o.name == self.output_name), None)
        if n_classes is None:
            if isinstance(graph_classes, int) and graph_classes > 0:
                n_classes = graph_classes
            else:  # dynamic class dim: one probe run at the middle of the bounds
                probe = torch.full((1, *input_shape), (float(bounds[0]) + float(bounds[1])) / 2)
                n_classes = int(self._run(probe).shape[1])
        super().__init__(n_classes=int(n_classes), input_shape=input_shape, bounds=bounds, output=output or "logits")
        self._output_known = output is not None

    def _run(self, x: Tensor) -> np.ndarray:
        arr = x.detach().cpu().numpy().astype(self._np_dtype, copy=False)
        step = self._fixed_batch or max(1, arr.shape[0])
        outs = []
        for i in range(0, arr.shape[0], step):
            chunk = arr[i : i + step]
            n = chunk.shape[0]
            if self._fixed_batch and n < step:  # pad a short last chunk to the graph's fixed batch size
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
            try:
                res = self.session.run([self.output_name], {self.input_name: chunk})[0]
            except Exception as exc:
                raise UsageError(
                    f"onnxruntime failed on a batch of shape {chunk.shape}: {str(exc).splitlines()[0]}"
                ) from None
            outs.append(np.asarray(res)[:n])
        return np.concatenate(outs) if outs else np.empty((0, 0), dtype=np.float32)

    def _scores(self, x: Tensor) -> Tensor:
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise UsageError(
                f"x has shape {tuple(x.shape)} but the ONNX model expects (N, {', '.join(map(str, self.input_shape))})"
            )
        if x.shape[0] == 0:
            return torch.empty(0, self.n_classes, device=x.device)
        out = torch.as_tensor(self._run(x), dtype=torch.float32)
        if out.dim() != 2 or out.shape[1] != self.n_classes or out.shape[0] != x.shape[0]:
            raise UsageError(
                f"the ONNX model returned shape {tuple(out.shape)}; expected ({x.shape[0]}, {self.n_classes})"
            )
        if not self._output_known:
            looks_prob = bool((out >= 0).all()) and bool(
                torch.allclose(out.sum(1), torch.ones(out.shape[0]), atol=1e-4)
            )
            self.output = "probabilities" if looks_prob else "logits"
            self._output_known = True
        return out.to(x.device)
