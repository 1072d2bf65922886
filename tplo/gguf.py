"""GGUF model files as ordinary Hugging Face folders, converted once and cached.

transformers reads a `.gguf` file (llama.cpp's format) with `from_pretrained(folder, gguf_file=name)`
and dequantises it to float, but the loaded model refuses `save_pretrained`, and reading the file
again costs minutes. `convert_gguf` does it once: the quantization metadata is removed from the loaded
model, and its safetensors weights, config and tokenizer are written to
`$TPLO_CACHE/models/<file stem>-<sha256 prefix>/`, first into a hidden temporary folder that is
renamed when complete. An interrupted conversion leaves no folder under the final name.

`check_gguf` reads only the file's header (magic, metadata, tensor table, expected size) and the
installed packages, so a missing package, a truncated or foreign file, or an architecture transformers
cannot read is reported in a second, before anything is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import mmap
import os
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from tplo.cache_dir import cache_root
from tplo.json_io import write_json_atomic

MAGIC = b"GGUF"
SOURCE_FILE = "gguf_source.json"
REQUIRED_PACKAGES = {"gguf": "gguf", "accelerate": "accelerate"}
# GGUF value types: struct format of the scalar types, 8 = string, 9 = array
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32
# llama.cpp architecture names that transformers reads under another name
TRANSFORMERS_NAMES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2",
                      "t5encoder": "t5"}


class GGUFError(ValueError):
    """A GGUF file that cannot be converted; the message says why and what to do."""


@dataclass(frozen=True)
class GGUFHeader:
    """What the header of a GGUF file declares."""

    version: int
    architecture: str
    name: str
    tensor_count: int
    data_bytes: int


class _Cursor:
    """Little-endian reads from a memory-mapped file, with an error instead of a crash past its end."""

    def __init__(self, data: mmap.mmap, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise GGUFError(f"{self.path}: the file ends inside its header (truncated or not a GGUF file); "
                            "download or assemble it again.")
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.data):
            raise GGUFError(f"{self.path}: the file ends inside its header (truncated); download or assemble it again.")
        text = bytes(self.data[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def value(self, kind: int):
        if kind in SCALARS:
            return self.take(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, count = self.take("<I"), self.take("<Q")
            if item == STRING:
                for _ in range(count):
                    length = self.take("<Q")
                    self.pos += length
            elif item in SCALARS:
                self.pos += count * struct.calcsize(SCALARS[item])
            else:
                return [self.value(item) for _ in range(count)]
            return None  # arrays are skipped: the check needs scalars only
        raise GGUFError(f"{self.path}: unknown GGUF value type {kind} at byte {self.pos}; the file is corrupt.")


def read_gguf_header(path: str | os.PathLike) -> GGUFHeader:
    """Parse the header, metadata and tensor table of a GGUF file and check that its tensor data is all there."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < 24:
            raise GGUFError(f"{path}: too short to be a GGUF file; download or assemble it again.")
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        cursor = _Cursor(data, path)
        if data[:4] != MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (it starts with {bytes(data[:4])!r}, not b'GGUF').")
        cursor.pos = 4
        version = cursor.take("<I")
        if version not in (2, 3):
            raise GGUFError(f"{path}: GGUF version {version} is not supported (2 and 3 are); re-convert it with a "
                            "current llama.cpp.")
        tensor_count, kv_count = cursor.take("<Q"), cursor.take("<Q")
        fields = {}
        for _ in range(kv_count):
            key = cursor.string()
            fields[key] = cursor.value(cursor.take("<I"))
        end = 0
        for _ in range(tensor_count):
            name = cursor.string()
            dims = [cursor.take("<Q") for _ in range(cursor.take("<I"))]
            kind, offset = cursor.take("<I"), cursor.take("<Q")
            try:
                block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise GGUFError(f"{path}: tensor {name!r} has unknown type {kind}; the file is corrupt.") from None
            count = 1
            for d in dims:
                count *= d
            end = max(end, offset + count // block * size)
        alignment = int(fields.get("general.alignment") or DEFAULT_ALIGNMENT)
        start = -(-cursor.pos // alignment) * alignment
        if start + end > len(data):
            raise GGUFError(f"{path}: the file is truncated ({len(data):,} bytes, its tensors need {start + end:,}); "
                            "download or assemble it again.")
    finally:
        data.close()
    architecture = fields.get("general.architecture")
    if not isinstance(architecture, str):
        raise GGUFError(f"{path}: the header has no general.architecture; the file is corrupt or not a model.")
    return GGUFHeader(version, architecture, str(fields.get("general.name") or path.stem), tensor_count, end)


def check_gguf(path: str | os.PathLike) -> GGUFHeader:
    """Raise a clear error unless `path` is a complete GGUF file of an architecture transformers can read and the
    packages the conversion needs are installed. Reads the header only (a fraction of a second)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist.")
    missing = [pip for module, pip in REQUIRED_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"reading {path.name} needs the package(s) {', '.join(missing)}: pip install {' '.join(missing)}")
    header = read_gguf_header(path)
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if TRANSFORMERS_NAMES.get(header.architecture, header.architecture) not in GGUF_SUPPORTED_ARCHITECTURES:
        import transformers

        raise GGUFError(
            f"{path.name}: transformers {transformers.__version__} cannot read GGUF architecture "
            f"{header.architecture!r} (it reads {', '.join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a != 'general')}). "
            "Use the model's Hugging Face folder or hub id instead, or upgrade transformers.")
    return header


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_folder(path: str | os.PathLike, sha256: str) -> Path:
    """Where the conversion of the GGUF file with this content hash lives: `$TPLO_CACHE/models/<stem>-<sha256[:16]>`."""
    return cache_root() / "models" / f"{Path(path).stem}-{sha256[:16]}"


def is_converted(folder: Path) -> bool:
    """Whether `folder` is a finished conversion (its source record is written last, before the rename)."""
    return (folder / SOURCE_FILE).is_file() and (folder / "config.json").is_file()


def convert_gguf(path: str | os.PathLike, sha256: str | None = None) -> Path:
    """The Hugging Face folder of a GGUF file, converting it on first use (with a status line).

    Args:
        path: the `.gguf` file.
        sha256: its content hash when already known (the bundled model's), else it is computed (about a second
            per 250 MB).
    """
    path = Path(path).expanduser().resolve()
    sha256 = sha256 or file_sha256(path)
    target = converted_folder(path, sha256)
    if is_converted(target):
        return target
    header = check_gguf(path)
    from rich.console import Console

    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        with Console(stderr=True).status(f"converting {path.name} ({header.architecture}) into {target} - once; "
                                         "later runs load that folder in seconds"):
            _write_hf_folder(path, staging)
            write_json_atomic({"gguf_file": str(path), "sha256": sha256, "architecture": header.architecture,
                               "name": header.name}, staging / SOURCE_FILE)
        try:
            os.rename(staging, target)
        except OSError:
            if not is_converted(target):  # another process finished the same conversion first: use its folder
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_hf_folder(path: Path, folder: Path) -> None:
    """Load the GGUF with transformers (dequantised to float32), drop its quantizer, save model and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.hf_quantizer.remove_quantization_config(model)  # the weights are plain float tensors now
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
