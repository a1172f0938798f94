"""Convert a CTranslate2 Whisper model (faster-whisper / WhisperX format) to an openai-whisper checkpoint.

No package ships an openai-whisper ``.pt`` file, but the CTranslate2 ``model.bin`` of a Whisper
model holds exactly the same tensors, only fused and renamed. This module

1. parses the CTranslate2 binary format (version 6, written by
   ``ctranslate2.specs.model_spec.ModelSpec._serialize``)::

       u32 version | str spec_name | u32 revision | u32 n_variables
       n_variables × ( str name | u8 rank | u32 dims[rank] | u8 dtype_id | u32 n_bytes | bytes )
       u32 n_aliases | n_aliases × ( str alias | str target )

   where ``str`` is ``u16 length (incl. NUL) | utf-8 bytes | NUL`` and dtype ids index
   ``("float32", "int8", "int16", "int32", "float16", "bfloat16")``;
2. splits the fused attention projections (``linear_0`` = q|k|v in self-attention, k|v in
   cross-attention) and maps the names onto ``whisper.model.Whisper``;
3. writes ``{"dims": ModelDimensions, "model_state_dict": ...}`` which ``whisper.load_model(path)``
   loads. Tensors keep CTranslate2's dtype (float16 for the published models): openai-whisper
   builds its model in float32 and ``load_state_dict`` casts on copy, so the file is half the size
   with no loss.

The checkpoint also carries ``"alignment_heads"`` (from CTranslate2's ``config.json``), which
``corpus_tools.models.loaders.load_openai_whisper`` applies for word timestamps; plain
``whisper.load_model`` ignores the extra key.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import save_checkpoint

CT2_BINARY_VERSION = 6
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 Whisper model this converter understands."""


@dataclass
class CT2Model:
    """The parsed content of a CTranslate2 ``model.bin``."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]     # name -> array (read-only views of the file's bytes)
    aliases: dict[str, str]              # alias -> variable name

    def get(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]

    def scalar(self, name: str) -> int:
        return int(self.get(name).reshape(-1)[0])


def _read_string(buf, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<H", buf, pos)
    pos += 2
    raw = bytes(buf[pos:pos + length])
    if not raw.endswith(b"\0"):
        raise CT2FormatError("corrupt string in CTranslate2 model (missing NUL terminator)")
    return raw[:-1].decode("utf-8"), pos + length


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (binary version 6) into numpy arrays."""
    path = Path(path)
    buf = path.read_bytes()      # one read; the arrays below are zero-copy views of it
    (version,) = struct.unpack_from("<I", buf, 0)
    if version != CT2_BINARY_VERSION:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version}, expected {CT2_BINARY_VERSION}")
    spec, pos = _read_string(buf, 4)
    revision, n_vars = struct.unpack_from("<II", buf, pos)
    pos += 8
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name, pos = _read_string(buf, pos)
        (rank,) = struct.unpack_from("<B", buf, pos)
        pos += 1
        shape = struct.unpack_from(f"<{rank}I", buf, pos)
        pos += 4 * rank
        dtype_id, n_bytes = struct.unpack_from("<BI", buf, pos)
        pos += 5
        if dtype_id >= len(CT2_DTYPES) or CT2_DTYPES[dtype_id] == "bfloat16":
            raise CT2FormatError(f"{path}: variable {name} has unsupported dtype id {dtype_id}")
        dtype = np.dtype(CT2_DTYPES[dtype_id]).newbyteorder("<")
        arr = np.frombuffer(buf, dtype=dtype, count=n_bytes // dtype.itemsize, offset=pos)
        variables[name] = arr.reshape(shape)
        pos += n_bytes
    (n_aliases,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    aliases = {}
    for _ in range(n_aliases):
        alias, pos = _read_string(buf, pos)
        target, pos = _read_string(buf, pos)
        aliases[alias] = target
    return CT2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)


def _count_layers(model: CT2Model, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    return 1 + max(int(m.group(1)) for name in model.variables if (m := pattern.match(name)))


def _linear(sd: dict, src: CT2Model, ct2: str, dst: str, bias: bool = True) -> None:
    sd[f"{dst}.weight"] = src.get(f"{ct2}/weight")
    if bias:
        sd[f"{dst}.bias"] = src.get(f"{ct2}/bias")


def _norm(sd: dict, src: CT2Model, ct2: str, dst: str) -> None:
    sd[f"{dst}.weight"] = src.get(f"{ct2}/gamma")
    sd[f"{dst}.bias"] = src.get(f"{ct2}/beta")


def _split_attention(sd: dict, src: CT2Model, ct2: str, dst: str, parts: tuple[str, ...]) -> None:
    """Split a fused projection (q|k|v or k|v) along the output dimension.

    openai-whisper's key projections have no bias; CTranslate2 stores zeros there.
    """
    weight = src.get(f"{ct2}/weight")
    bias = src.get(f"{ct2}/bias")
    for part, w, b in zip(parts, np.split(weight, len(parts)), np.split(bias, len(parts))):
        sd[f"{dst}.{part}.weight"] = w
        if part != "key":
            sd[f"{dst}.{part}.bias"] = b


def _self_attention(sd: dict, model: CT2Model, c: str, o: str) -> None:
    """A block's pre-norm self-attention (CT2 fuses q, k and v into one linear)."""
    _norm(sd, model, f"{c}/self_attention/layer_norm", f"{o}.attn_ln")
    _split_attention(sd, model, f"{c}/self_attention/linear_0", f"{o}.attn", ("query", "key", "value"))
    _linear(sd, model, f"{c}/self_attention/linear_1", f"{o}.attn.out")


def _ffn(sd: dict, model: CT2Model, c: str, o: str) -> None:
    """A block's pre-norm feed-forward network."""
    _norm(sd, model, f"{c}/ffn/layer_norm", f"{o}.mlp_ln")
    _linear(sd, model, f"{c}/ffn/linear_0", f"{o}.mlp.0")
    _linear(sd, model, f"{c}/ffn/linear_1", f"{o}.mlp.2")


def ct2_to_openai_state(model: CT2Model) -> tuple[dict, dict[str, np.ndarray]]:
    """Return ``(dims, state_dict)`` for ``whisper.model.Whisper`` from a parsed CT2 Whisper model."""
    if model.spec != "WhisperSpec":
        raise CT2FormatError(f"not a Whisper model: CTranslate2 spec is {model.spec!r}")
    n_enc, n_dec = _count_layers(model, "encoder"), _count_layers(model, "decoder")
    sd: dict[str, np.ndarray] = {}
    _linear(sd, model, "encoder/conv1", "encoder.conv1")
    _linear(sd, model, "encoder/conv2", "encoder.conv2")
    sd["encoder.positional_embedding"] = model.get("encoder/position_encodings/encodings")
    for i in range(n_enc):
        c, o = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        _self_attention(sd, model, c, o)
        _ffn(sd, model, c, o)
    _norm(sd, model, "encoder/layer_norm", "encoder.ln_post")

    sd["decoder.token_embedding.weight"] = model.get("decoder/embeddings/weight")
    sd["decoder.positional_embedding"] = model.get("decoder/position_encodings/encodings")
    for i in range(n_dec):
        c, o = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _self_attention(sd, model, c, o)
        _norm(sd, model, f"{c}/attention/layer_norm", f"{o}.cross_attn_ln")
        _linear(sd, model, f"{c}/attention/linear_0", f"{o}.cross_attn.query")
        _split_attention(sd, model, f"{c}/attention/linear_1", f"{o}.cross_attn", ("key", "value"))
        _linear(sd, model, f"{c}/attention/linear_2", f"{o}.cross_attn.out")
        _ffn(sd, model, c, o)
    _norm(sd, model, "decoder/layer_norm", "decoder.ln")

    conv1 = sd["encoder.conv1.weight"]
    emb = sd["decoder.token_embedding.weight"]
    dims = dict(
        n_mels=int(conv1.shape[1]),
        n_audio_ctx=int(sd["encoder.positional_embedding"].shape[0]),
        n_audio_state=int(conv1.shape[0]),
        n_audio_head=model.scalar("encoder/num_heads"),
        n_audio_layer=n_enc,
        n_vocab=int(emb.shape[0]),
        n_text_ctx=int(sd["decoder.positional_embedding"].shape[0]),
        n_text_state=int(emb.shape[1]),
        n_text_head=model.scalar("decoder/num_heads"),
        n_text_layer=n_dec,
    )
    return dims, sd


def convert_ct2_to_openai(ct2_dir: str | Path, out_path: str | Path, *, dtype: str = "float16") -> Path:
    """Convert the CTranslate2 Whisper model in ``ct2_dir`` to an openai-whisper ``.pt`` at ``out_path``.

    The state dict is checked against ``whisper.model.Whisper`` (strict ``load_state_dict``)
    before anything is written; the file appears atomically.
    """
    import torch
    from whisper.model import ModelDimensions, Whisper

    ct2_dir, out_path = Path(ct2_dir), Path(out_path)
    model = read_ct2_model(ct2_dir / "model.bin")
    dims, arrays = ct2_to_openai_state(model)
    state = {k: torch.from_numpy(np.array(v)).to(getattr(torch, dtype)) for k, v in arrays.items()}
    Whisper(ModelDimensions(**dims)).load_state_dict(state, strict=True)   # fails loudly on a mapping error

    checkpoint = {"dims": dims, "model_state_dict": state}
    config_path = ct2_dir / "config.json"
    if config_path.exists():
        heads = json.loads(config_path.read_text()).get("alignment_heads")
        if heads:
            checkpoint["alignment_heads"] = [list(map(int, h)) for h in heads]
    return save_checkpoint(checkpoint, out_path)


def alignment_heads_mask(heads: list[list[int]], n_text_layer: int, n_text_head: int) -> np.ndarray:
    """Boolean (layer, head) mask of the cross-attention heads used for word timestamps."""
    mask = np.zeros((n_text_layer, n_text_head), dtype=bool)
    for layer, head in heads:
        mask[layer, head] = True
    return mask
