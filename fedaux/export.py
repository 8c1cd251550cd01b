"""Self-contained models for base stations: ONNX or TorchScript, with everything needed to feed
them in their metadata (class names, features and their formulas, window length, packet-length
quantity, windowing), so a base station needs neither the config nor fedaux's training stack.

The exported graph maps windows ``(B, C, packets)`` float32 to one ``(B, K_task)`` softmax per
head, in the metadata's ``tasks`` order. ONNX keeps the metadata as the model's ``fedaux``
metadata property; TorchScript as the extra file ``fedaux.json``.

``onnx-int8`` is the ONNX model quantised by ONNX Runtime's static quantiser (QDQ, int8 weights
per channel, uint8 activations calibrated on windows of the run's own data): about four times
the float model's throughput on a CPU with VNNI, at the cost of exact agreement (its
probabilities differ by a few thousandths; ``benchmarks/bench_inference.py`` reports how often its
predicted class differs).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedaux.errors import ConfigError
from fedaux.inference import Predictor, TrainedRun
from fedaux.model.module import MultiTaskModule

FORMATS = ("onnx", "onnx-int8", "torchscript")
CALIBRATION_WINDOWS = 1024  # windows of the run's own data that set the int8 activation ranges
METADATA_KEY = "fedaux"
TORCHSCRIPT_EXTRA = "fedaux.json"


class ProbabilityHeads(nn.Module):
    """The multi-task model with a softmax on every head: ``(B, C, P)`` -> tuple of ``(B, K_t)``."""

    def __init__(self, model: MultiTaskModule, tasks: list[str]) -> None:
        super().__init__()
        # The trunk and heads only: plain modules, without the LightningModule's trainer hooks,
        # which tracing and ONNX export would otherwise touch.
        self.trunk = model.trunk
        self.heads = nn.ModuleList([model.heads[t] for t in tasks])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.trunk(x)
        return tuple(torch.softmax(head(features), dim=-1) for head in self.heads)


def metadata(run: TrainedRun) -> dict[str, Any]:
    """What a consumer of the exported model must know to feed it and read its outputs."""
    from fedaux.data.features import PACKET_FEATURES
    from fedaux.inference import model_spec

    summary_path = run.run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    spec = model_spec(run)
    return {
        "format": "fedaux-model",
        "version": 1,
        **spec,
        "feature_formulas": {f: " ".join((PACKET_FEATURES.get(f).__doc__ or "").split()) for f in spec["features"]},
        "input": "windows (B, C, packets) float32, one channel per feature, zero-padded after a flow's last packet",
        "outputs": "per task, (B, classes) softmax probabilities; a flow's probability is the mean over its windows",
        "suggested_min_confidence": summary.get("suggested_min_confidence"),
        # per unknown score; an exported model gives probabilities, so fedaux-predict --model uses msp's
        "suggested_unknown_threshold": summary.get("suggested_unknown_threshold"),
    }


def export_run(run: TrainedRun, format: str, out: str | Path) -> Path:
    """Write ``run``'s model as ONNX or TorchScript to ``out``; returns the path."""
    if format not in FORMATS:
        raise ConfigError(f"--format={format!r} is not valid; choose one of {list(FORMATS)}")
    meta = metadata(run)
    wrapper = ProbabilityHeads(run.model, meta["tasks"]).eval()
    example = torch.zeros(2, len(meta["features"]), meta["packets"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript still runs without Python, as asked
            traced = torch.jit.trace(wrapper, example)
        torch.jit.save(traced, str(out), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(meta)})
        return out
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the onnx extra: pip install 'fedaux[onnx]'") from None
    outputs = [f"probs_{t}" for t in meta["tasks"]]
    float_path = out if format == "onnx" else out.with_name(out.name + ".float.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter: no onnxscript needed
        torch.onnx.export(wrapper, (example,), str(float_path), dynamo=False, input_names=["windows"],
                          output_names=outputs, dynamic_axes={"windows": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                          opset_version=17)
    if format == "onnx-int8":
        _quantize(run, float_path, out)
        meta["quantized"] = "int8 (ONNX Runtime static quantisation, QDQ, per-channel weights)"
    proto = onnx.load(str(out))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save(proto, str(out))
    return out


def _quantize(run: TrainedRun, float_path: Path, out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fedaux.data.sources import load_flows
    from fedaux.inference import flow_windows

    flows, _ = load_flows(run.cfg.data.root, run.cfg.data)
    windows, _, _ = flow_windows(flows, run.info["features"], run.info["packets"], run.window_spec())
    sample = windows[np.random.default_rng(0).permutation(len(windows))[:CALIBRATION_WINDOWS]]

    class Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"windows": sample[i:i + 64]} for i in range(0, len(sample), 64)])

        def get_next(self):
            return next(self.batches, None)

    prepared = float_path.with_name(float_path.name + ".pre.onnx")
    quant_pre_process(str(float_path), str(prepared))
    # Only the arithmetic is quantised; the softmax outputs stay float (quantised, they would move
    # in steps of 1/255). Weights use 7 bits (reduce_range): on x86 CPUs with AVX2 but no VNNI,
    # ONNX Runtime's u8 x s8 kernel (VPMADDUBSW) saturates its 16-bit sums with full-range weights,
    # which ONNX Runtime's documentation warns of; measured on a 2-core AMD EPYC (AVX2, no VNNI):
    # mean |int8 - float| probability 0.29 with full range, under 0.01 with 7-bit weights
    # (tests/test_inference.py::test_the_int8_model_mostly_agrees_with_the_float_model).
    quantize_static(str(prepared), str(out), Windows(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    op_types_to_quantize=["Conv", "Gemm", "MatMul"])
    for path in (float_path, prepared):
        path.unlink(missing_ok=True)


def load_exported(path: str | Path, threads: int = 1) -> tuple[Predictor, dict[str, Any]]:
    """A predictor and the metadata of an exported model (ONNX through ONNX Runtime, or TorchScript).

    Raises:
        ConfigError: the file is neither, or lacks fedaux's metadata.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        is_zip = handle.read(4) == b"PK\x03\x04"  # TorchScript archives are zip files; ONNX is protobuf
    if is_zip:
        extra = {TORCHSCRIPT_EXTRA: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        if not extra[TORCHSCRIPT_EXTRA]:
            raise ConfigError(f"{path}: a TorchScript file without fedaux's metadata ({TORCHSCRIPT_EXTRA})")
        meta = json.loads(extra[TORCHSCRIPT_EXTRA])
        module.eval()

        def predict_ts(x: np.ndarray) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                outputs = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
            return {t: o.numpy() for t, o in zip(meta["tasks"], outputs)}

        return predict_ts, meta
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("running an ONNX model needs the onnx extra: pip install 'fedaux[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ONNX Runtime raises its own exception types for unreadable files
        raise ConfigError(f"{path}: neither a TorchScript nor a readable ONNX model ({str(err).splitlines()[0]})") from None
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ConfigError(f"{path}: an ONNX model without fedaux's metadata")
    meta = json.loads(props[METADATA_KEY])

    def predict_onnx(x: np.ndarray) -> dict[str, np.ndarray]:
        outputs = session.run(None, {"windows": np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(meta["tasks"], outputs))

    return predict_onnx, meta
