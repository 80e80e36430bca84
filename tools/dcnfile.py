"""dcnfile — writer and reader of the dcnserve model file (model/FORMAT.md).

The Python side of the model-file contract: the PyTorch exporter, the golden
generator and the tests write and read `.dcn` files through this module only.
Standard library (`struct`, `zlib`, `mmap`) and NumPy; nothing else.

Layers, bottom up:
- typed metadata values (`u32(5)`, `arr("f32", [...])`, ...) and the GGUF v3
  container: `write_dcn` / `load_dcn` / `read_dcn`;
- element conversions: F16 and BF16 rounded to nearest even from float32,
  I8 with a per-row float32 scale (`quantize_i8`), and back (`to_f32`);
- the id contract: `hash64` and `map_id` exactly as FORMAT.md §3 says;
- model level: `validate_metadata` and `expected_tensors` (what a loader
  demands), and `build_model_file`, which turns a plain feature/architecture
  spec plus NumPy weights into a complete file.

Design notes
- Writes are atomic: a temporary file in the target directory, fsync, then
  os.replace over the target; a server mapping the old file is never hurt.
- Tensors are written in the order given, each at a 64-byte aligned offset,
  each padded with zeros to the next multiple of 64 (the last one too), so
  the data section is a whole number of 64-byte blocks.
- The CRC-32 (`dcnv2.checksum.crc32`) covers every byte of the data section,
  padding included; it is a fixed-size key, so it is filled in after the data
  is laid out without moving anything.
- Untyped Python values are accepted only where the type is unambiguous: a
  key this spec defines (its spec type is used), a str, or a bool. Any other
  int or float must be typed explicitly.
- The reader maps the file (mmap) and hands out read-only NumPy views; BF16
  is returned raw as uint16 unless dequantised.
"""
import math
import mmap
import os
import re
import struct
import tempfile
import zlib
from collections import namedtuple

import numpy as np

GGUF_MAGIC = 0x46554747
GGUF_VERSION = 3
FORMAT_VERSION = 1
ALIGNMENT = 64

MAX_KEY_BYTES = 256
MAX_STR_BYTES = 1 << 20
MAX_ARRAY_ELEMS = 1 << 28
MAX_TENSOR_NAME_BYTES = 64

# ---------------------------------------------------------------- typed values

# GGUF metadata value types: name -> (id, struct code or None).
KV_TYPES = {
    "u8": (0, "B"), "i8": (1, "b"), "u16": (2, "H"), "i16": (3, "h"),
    "u32": (4, "I"), "i32": (5, "i"), "f32": (6, "f"), "bool": (7, "B"),
    "str": (8, None), "array": (9, None), "u64": (10, "Q"), "i64": (11, "q"),
    "f64": (12, "d"),
}
KV_TYPE_BY_ID = {v[0]: k for k, v in KV_TYPES.items()}
INT_RANGES = {
    "u8": (0, 2**8 - 1), "i8": (-2**7, 2**7 - 1), "u16": (0, 2**16 - 1),
    "i16": (-2**15, 2**15 - 1), "u32": (0, 2**32 - 1), "i32": (-2**31, 2**31 - 1),
    "u64": (0, 2**64 - 1), "i64": (-2**63, 2**63 - 1),
}
INT_TYPES = frozenset(INT_RANGES)
FLOAT_TYPES = frozenset(("f32", "f64"))

# A metadata value with its GGUF type; elem is the element type of an array.
Typed = namedtuple("Typed", "type value elem", defaults=(None,))


def u8(v): return Typed("u8", v)
def i8(v): return Typed("i8", v)
def u16(v): return Typed("u16", v)
def i16(v): return Typed("i16", v)
def u32(v): return Typed("u32", v)
def i32(v): return Typed("i32", v)
def u64(v): return Typed("u64", v)
def i64(v): return Typed("i64", v)
def f32(v): return Typed("f32", v)
def f64(v): return Typed("f64", v)
def boolean(v): return Typed("bool", v)
def string(v): return Typed("str", v)


def arr(elem, values):
    """An ARRAY value of element type elem ("u32", "f32", "str", ...)."""
    return Typed("array", list(values), elem)


# Spec types of the keys FORMAT.md defines: a type name, ("array", elem), or
# "int" (any integer type accepted; written as u32 or u64 by default).
KEY_TYPES = {
    "general.architecture": "str",
    "general.alignment": "u32",
    "general.name": "str",
    "general.version": "str",
    "general.description": "str",
    "dcnv2.format_version": "u32",
    "dcnv2.checksum.crc32": "u32",
    "dcnv2.dense.count": "int",
    "dcnv2.dense.names": ("array", "str"),
    "dcnv2.dense.default": ("array", "f32"),
    "dcnv2.dense.clip_min": ("array", "f32"),
    "dcnv2.dense.clip_max": ("array", "f32"),
    "dcnv2.dense.transform": ("array", "str"),
    "dcnv2.dense.log_shift": ("array", "f32"),
    "dcnv2.dense.log_floor": ("array", "f32"),
    "dcnv2.dense.mean": ("array", "f32"),
    "dcnv2.dense.std": ("array", "f32"),
    "dcnv2.sparse.count": "int",
    "dcnv2.sparse.names": ("array", "str"),
    "dcnv2.sparse.vocab_size": ("array", "u64"),
    "dcnv2.sparse.dim": ("array", "u32"),
    "dcnv2.sparse.pooling": ("array", "str"),
    "dcnv2.sparse.mapping": ("array", "str"),
    "dcnv2.sparse.hash_seed": ("array", "u64"),
    "dcnv2.sparse.oov_buckets": ("array", "u64"),
    "dcnv2.sparse.missing_row": ("array", "i64"),
    "dcnv2.sparse.unknown_row": ("array", "i64"),
    "dcnv2.sparse.max_ids": ("array", "u32"),
    "dcnv2.bottom.sizes": ("array", "u32"),
    "dcnv2.cross.kind": "str",
    "dcnv2.cross.layers": "int",
    "dcnv2.cross.rank": "int",
    "dcnv2.cross.experts": "int",
    "dcnv2.cross.activation": "str",
    "dcnv2.cross.gate": "str",
    "dcnv2.cross.gate_shared": "bool",
    "dcnv2.deep.sizes": ("array", "u32"),
    "dcnv2.combine": "str",
}


class DcnFormatError(ValueError):
    """A file or a metadata/tensor set that breaks FORMAT.md."""


def _type_names(meta):
    """key -> type name of Typed values, arrays as 'array/<elem>'."""
    return {k: v.type + ("/" + v.elem if v.type == "array" else "") for k, v in meta.items()}


def _typed(key, v):
    """Returns v as a Typed value, inferring its type from the key's spec type
    or from a str/bool; raises TypeError when the type is ambiguous."""
    spec = KEY_TYPES.get(key)
    if isinstance(v, Typed):
        if spec is not None:
            ok = (spec == "int" and v.type in INT_TYPES) or \
                 (isinstance(spec, tuple) and v.type == "array" and v.elem == spec[1]) or \
                 (v.type == spec)
            if not ok:
                raise DcnFormatError(f"{key}: type {v.type}{'/' + v.elem if v.elem else ''} "
                                     f"is not the spec type {spec}")
        return v
    if spec == "int":
        return Typed("u32" if 0 <= int(v) < 2**32 else "u64", int(v))
    if isinstance(spec, tuple):
        return Typed("array", list(v), spec[1])
    if spec is not None:
        return Typed(spec, v)
    if isinstance(v, bool):
        return Typed("bool", v)
    if isinstance(v, str):
        return Typed("str", v)
    raise TypeError(f"{key}: give an explicit type (u32(...), f32(...), arr(...)) "
                    f"for a {type(v).__name__} value")


def _pack_str(s):
    """Encodes a GGUF str (u64 length + UTF-8 bytes)."""
    if not isinstance(s, str):
        raise DcnFormatError(f"expected a str, got {type(s).__name__}")
    b = s.encode("utf-8")
    if len(b) > MAX_STR_BYTES:
        raise DcnFormatError(f"string of {len(b)} bytes exceeds {MAX_STR_BYTES}")
    return struct.pack("<Q", len(b)) + b


def _pack_scalar(t, v, key):
    """Encodes one scalar of type t; raises DcnFormatError when v does not fit."""
    if t == "str":
        return _pack_str(v)
    if t == "bool":
        if v not in (True, False, 0, 1) or isinstance(v, float):
            raise DcnFormatError(f"{key}: bool value must be True/False, got {v!r}")
        return struct.pack("<B", 1 if v else 0)
    code = KV_TYPES[t][1]
    if t in INT_TYPES:
        if isinstance(v, (bool, float)) or not isinstance(v, (int, np.integer)):
            raise DcnFormatError(f"{key}: {t} value must be an int, got {v!r}")
        lo, hi = INT_RANGES[t]
        if not lo <= int(v) <= hi:
            raise DcnFormatError(f"{key}: {v} out of range for {t}")
        return struct.pack("<" + code, int(v))
    try:
        return struct.pack("<" + code, float(v))
    except (OverflowError, TypeError, ValueError) as e:
        raise DcnFormatError(f"{key}: {v!r} is not a {t}: {e}") from None


def _pack_kv(key, tv):
    """Encodes one metadata entry: key, type, value."""
    kb = key.encode("utf-8")
    if not 1 <= len(kb) <= MAX_KEY_BYTES:
        raise DcnFormatError(f"key {key!r}: length must be 1..{MAX_KEY_BYTES} bytes")
    if tv.type not in KV_TYPES:
        raise DcnFormatError(f"{key}: unknown type {tv.type!r}")
    out = [_pack_str(key), struct.pack("<I", KV_TYPES[tv.type][0])]
    if tv.type == "array":
        if tv.elem not in KV_TYPES or tv.elem == "array":
            raise DcnFormatError(f"{key}: bad array element type {tv.elem!r} (no nested arrays)")
        vals = list(tv.value)
        if len(vals) > MAX_ARRAY_ELEMS:
            raise DcnFormatError(f"{key}: array of {len(vals)} elements exceeds {MAX_ARRAY_ELEMS}")
        out.append(struct.pack("<IQ", KV_TYPES[tv.elem][0], len(vals)))
        out.extend(_pack_scalar(tv.elem, v, key) for v in vals)
    else:
        out.append(_pack_scalar(tv.type, tv.value, key))
    return b"".join(out)


# ---------------------------------------------------------------- tensor dtypes

DTYPES = {"F32": 0, "F16": 1, "I8": 24, "I32": 26, "I64": 27, "BF16": 30}
DTYPE_BY_ID = {v: k for k, v in DTYPES.items()}
DTYPE_SIZE = {"F32": 4, "F16": 2, "I8": 1, "I32": 4, "I64": 8, "BF16": 2}
# NumPy storage type of each dtype as read back (BF16 kept as raw uint16).
DTYPE_NP = {"F32": "<f4", "F16": "<f2", "I8": "i1", "I32": "<i4", "I64": "<i8", "BF16": "<u2"}


def bf16_bits(x):
    """Rounds float values to bfloat16 (nearest even, from float32) and
    returns the raw uint16 bits; NaN stays a quiet NaN."""
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    b = a.view(np.uint32).astype(np.uint64)
    rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    nan = np.isnan(a)
    rounded = np.where(nan, (b >> 16) | 0x40, rounded)
    return rounded.astype(np.uint16)


def bf16_to_f32(bits):
    """Widens raw bfloat16 bits (uint16) to float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def quantize_i8(w):
    """Symmetric per-row int8 quantisation of a [rows, dim] matrix: returns
    (q int8 [rows, dim], scale float32 [rows]) with scale = max|row| / 127 and
    q = round-half-even(w / scale); an all-zero row gets scale 0 and q 0."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError("quantize_i8 needs a 2-D [rows, dim] matrix")
    if not np.all(np.isfinite(w)):
        raise ValueError("quantize_i8: non-finite weight")
    scale = (np.max(np.abs(w), axis=1) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(w / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_i8(q, scale):
    """Row j of an I8 table is q[j] * scale[j] (float32)."""
    return np.asarray(q, dtype=np.float32) * np.asarray(scale, dtype=np.float32)[:, None]


def to_f32(raw, dtype):
    """Converts a stored tensor (raw storage as read) to float32; I8 is
    returned unscaled (see dequantize_i8)."""
    if dtype == "BF16":
        return bf16_to_f32(raw)
    return np.asarray(raw).astype(np.float32)


def encode_tensor(a, dtype):
    """Returns the little-endian bytes of array a stored as dtype. Floats are
    rounded through float32 (F16/BF16 nearest even); integer dtypes need
    integer input that fits."""
    if dtype not in DTYPES:
        raise DcnFormatError(f"unknown dtype {dtype!r}")
    a = np.asarray(a)
    if dtype in ("F32", "F16", "BF16"):
        if a.dtype.kind not in "fiu":
            raise DcnFormatError(f"cannot store {a.dtype} as {dtype}")
        a32 = a.astype(np.float32)
        if dtype == "F32":
            out = a32.astype("<f4")
        elif dtype == "F16":
            out = a32.astype("<f2")
        else:
            out = bf16_bits(a32).astype("<u2")
    else:
        if a.dtype.kind not in "iu":
            raise DcnFormatError(f"{dtype} tensor needs integer input, got {a.dtype}")
        info = np.iinfo(DTYPE_NP[dtype])
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise DcnFormatError(f"values out of range for {dtype}")
        out = a.astype(DTYPE_NP[dtype])
    return np.ascontiguousarray(out).tobytes()


# ---------------------------------------------------------------- container

def _align(n, a=ALIGNMENT):
    return (n + a - 1) // a * a


def write_dcn(path, metadata, tensors, checksum=True, validate=True):
    """Writes a .dcn file atomically.

    metadata: dict key -> value (Typed, or untyped where unambiguous; see the
    module notes). general.alignment (64) and, for dcnv2 files,
    dcnv2.format_version are added when absent. tensors: dict name ->
    (ndarray in PyTorch shape order, dtype str), written in dict order.
    checksum: store dcnv2.checksum.crc32 of the data section. validate: for
    general.architecture == "dcnv2", check the metadata and the tensor set
    against FORMAT.md first. Raises DcnFormatError (nothing written) on a
    violation; returns the number of bytes written."""
    meta = {}
    for k, v in metadata.items():
        meta[k] = _typed(k, v)
    meta.setdefault("general.alignment", u32(ALIGNMENT))
    if meta["general.alignment"] != u32(ALIGNMENT):
        raise DcnFormatError("general.alignment must be u32 64")
    if "general.architecture" in meta and meta["general.architecture"].value == "dcnv2":
        meta.setdefault("dcnv2.format_version", u32(FORMAT_VERSION))
    if checksum:
        meta["dcnv2.checksum.crc32"] = u32(0)      # placeholder, same size
    else:
        meta.pop("dcnv2.checksum.crc32", None)

    # Lay out the tensors.
    infos, blobs, offset = [], [], 0
    for name, item in tensors.items():
        if not isinstance(item, tuple) or len(item) != 2:
            raise DcnFormatError(f"tensor {name}: expected (array, dtype)")
        a, dtype = item
        a = np.asarray(a)
        nb = name.encode("utf-8")
        if not 1 <= len(nb) <= MAX_TENSOR_NAME_BYTES:
            raise DcnFormatError(f"tensor {name!r}: name must be 1..64 bytes")
        if not 1 <= a.ndim <= 4:
            raise DcnFormatError(f"tensor {name}: {a.ndim} dims, must be 1..4")
        if a.size == 0:
            raise DcnFormatError(f"tensor {name}: empty")
        data = encode_tensor(a, dtype)
        infos.append((name, a.shape, dtype, offset))
        blobs.append(data)
        offset = _align(offset + len(data))

    if validate and meta.get("general.architecture", string("")).value == "dcnv2":
        plain = {k: v.value for k, v in meta.items()}
        validate_metadata(plain, _type_names(meta))
        shapes = {n: (tuple(s), d) for n, s, d, _ in infos}
        _check_tensor_set(plain, shapes, {n: np.asarray(tensors[n][0]) for n in tensors
                                          if n.startswith("vocab.")})

    crc = 0
    data_parts = []
    for (name, shape, dtype, off), data in zip(infos, blobs):
        pad = _align(len(data)) - len(data)
        data_parts.append(data)
        if pad:
            data_parts.append(b"\0" * pad)
    for p in data_parts:
        crc = zlib.crc32(p, crc)
    if checksum:
        meta["dcnv2.checksum.crc32"] = u32(crc & 0xFFFFFFFF)

    head = [struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(infos), len(meta))]
    head.extend(_pack_kv(k, v) for k, v in meta.items())
    for name, shape, dtype, off in infos:
        ne = list(reversed(shape))
        head.append(_pack_str(name) + struct.pack("<I", len(ne)) +
                    struct.pack("<%dQ" % len(ne), *ne) + struct.pack("<IQ", DTYPES[dtype], off))
    header = b"".join(head)
    header += b"\0" * (_align(len(header)) - len(header))

    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            for p in data_parts:
                f.write(p)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return len(header) + sum(len(p) for p in data_parts)


class _Cursor:
    """Bounds-checked little-endian reads over a buffer."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, n):
        if n < 0 or self.pos + n > len(self.buf):
            raise DcnFormatError(f"truncated header at byte {self.pos}")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt):
        fmt = "<" + fmt
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def str(self, limit=MAX_STR_BYTES):
        (n,) = self.unpack("Q")
        if n > limit:
            raise DcnFormatError(f"string of {n} bytes at byte {self.pos} exceeds {limit}")
        return bytes(self.take(n)).decode("utf-8")

    def scalar(self, t):
        if t == "str":
            return self.str()
        if t == "bool":
            (b,) = self.unpack("B")
            if b > 1:
                raise DcnFormatError(f"bool value {b} at byte {self.pos - 1}")
            return bool(b)
        (v,) = self.unpack(KV_TYPES[t][1])
        return v


class DcnFile:
    """A parsed .dcn file: metadata (plain values), types (key -> type name,
    'array/<elem>' for arrays), tensors (read-only raw views into the
    mapping), dtypes, offsets (absolute file offsets), data_offset,
    file_size. Keep the object alive while using the tensor views."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.file_size = os.fstat(f.fileno()).st_size
            if self.file_size == 0:
                raise DcnFormatError("empty file")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        c = _Cursor(memoryview(self._mm))
        magic, version, n_tensors, n_kv = c.unpack("IIQQ")
        if magic != GGUF_MAGIC:
            raise DcnFormatError(f"bad magic 0x{magic:08x}")
        if version != GGUF_VERSION:
            raise DcnFormatError(f"GGUF version {version}, expected 3")
        if n_kv > self.file_size or n_tensors > self.file_size:
            raise DcnFormatError("counts exceed the file size")
        self.metadata, self.types = {}, {}
        for _ in range(n_kv):
            key = c.str(MAX_KEY_BYTES)
            (tid,) = c.unpack("I")
            t = KV_TYPE_BY_ID.get(tid)
            if t is None:
                raise DcnFormatError(f"{key}: unknown type id {tid}")
            if key in self.metadata:
                raise DcnFormatError(f"duplicate key {key}")
            if t == "array":
                eid, n = c.unpack("IQ")
                et = KV_TYPE_BY_ID.get(eid)
                if et is None or et == "array":
                    raise DcnFormatError(f"{key}: bad array element type {eid}")
                if n > MAX_ARRAY_ELEMS:
                    raise DcnFormatError(f"{key}: array of {n} elements")
                self.metadata[key] = [c.scalar(et) for _ in range(n)]
                self.types[key] = "array/" + et
            else:
                self.metadata[key] = c.scalar(t)
                self.types[key] = t
        align = self.metadata.get("general.alignment", 32)
        if align != ALIGNMENT:
            raise DcnFormatError(f"general.alignment is {align}, must be 64")
        infos = []
        names = set()
        for _ in range(n_tensors):
            name = c.str(MAX_TENSOR_NAME_BYTES)
            (nd,) = c.unpack("I")
            if not 1 <= nd <= 4:
                raise DcnFormatError(f"tensor {name}: {nd} dims")
            ne = c.unpack("%dQ" % nd)
            dt_id, off = c.unpack("IQ")
            dt = DTYPE_BY_ID.get(dt_id)
            if dt is None:
                raise DcnFormatError(f"tensor {name}: unknown dtype {dt_id}")
            if name in names:
                raise DcnFormatError(f"duplicate tensor {name}")
            names.add(name)
            infos.append((name, tuple(reversed(ne)), dt, off))
        self.data_offset = _align(c.pos)
        self.tensors, self.dtypes, self.offsets = {}, {}, {}
        spans = []
        for name, shape, dt, off in infos:
            if off % ALIGNMENT:
                raise DcnFormatError(f"tensor {name}: offset {off} not a multiple of 64")
            n = 1
            for s in shape:
                n *= s
            nbytes = n * DTYPE_SIZE[dt]
            start = self.data_offset + off
            if n == 0 or start + nbytes > self.file_size:
                raise DcnFormatError(f"tensor {name}: outside the file")
            spans.append((start, start + nbytes, name))
            self.tensors[name] = np.frombuffer(self._mm, dtype=DTYPE_NP[dt], count=n,
                                               offset=start).reshape(shape)
            self.dtypes[name] = dt
            self.offsets[name] = start
        spans.sort()
        for a, b in zip(spans, spans[1:]):
            if b[0] < a[1]:
                raise DcnFormatError(f"tensors {a[2]} and {b[2]} overlap")

    def crc32(self):
        """CRC-32 of the data section as it is on disk."""
        return zlib.crc32(self._mm[self.data_offset:]) & 0xFFFFFFFF

    def verify(self):
        """True if no checksum is stored or the stored one matches."""
        want = self.metadata.get("dcnv2.checksum.crc32")
        return want is None or want == self.crc32()

    def f32(self, name):
        """Tensor name as a float32 array; I8 embedding tables are scaled by
        their .scale tensor, I32/I64 converted."""
        raw, dt = self.tensors[name], self.dtypes[name]
        if dt == "I8" and name.endswith(".weight"):
            return dequantize_i8(raw, self.tensors[name[:-len("weight")] + "scale"])
        return to_f32(raw, dt)


def load_dcn(path):
    """Parses path (FORMAT.md §1 container checks); returns a DcnFile or
    raises DcnFormatError."""
    return DcnFile(path)


def read_dcn(path, dequant=True):
    """Reads a whole file: returns (metadata dict, tensors dict). With dequant,
    every float tensor is a float32 copy (F16/BF16 widened, I8 weights times
    their scale) and integer tensors are copies in their own type; without,
    raw copies of the stored values (BF16 as uint16)."""
    f = DcnFile(path)
    out = {}
    for name, raw in f.tensors.items():
        if dequant and f.dtypes[name] in ("F32", "F16", "BF16", "I8"):
            out[name] = np.array(f.f32(name), dtype=np.float32)
        else:
            out[name] = np.array(raw)
    return dict(f.metadata), out


# ---------------------------------------------------------------- id contract

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
M64 = 0xFFFFFFFFFFFFFFFF


def hash64(seed, data):
    """FORMAT.md §3: FNV-1a 64 from offset_basis XOR seed over data (bytes, or
    str as UTF-8), then the murmur3 fmix64 finaliser. Returns an int in
    [0, 2^64)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    h = (FNV_OFFSET ^ seed) & M64
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & M64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    h ^= h >> 33
    return h


_DEC_RE = re.compile(r"-?[0-9]{1,19}")
_HEX_RE = re.compile(r"[0-9a-fA-F]{1,16}")
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def make_sparse_spec(meta, i, vocab_keys=None, vocab_rows=None):
    """The mapping parameters of sparse feature i from file metadata (and,
    for mapping vocab, its vocab tensors) as the dict map_id takes."""
    s = {k: meta["dcnv2.sparse." + k][i] for k in (
        "vocab_size", "mapping", "hash_seed", "oov_buckets", "missing_row",
        "unknown_row", "max_ids", "pooling", "dim", "names")}
    s["name"] = s.pop("names")
    if s["mapping"] == "vocab":
        keys = np.asarray(vocab_keys).astype(np.int64).view(np.uint64)
        s["vocab"] = dict(zip((int(k) for k in keys), (int(r) for r in vocab_rows)))
    return s


def map_id(spec, value):
    """Maps one id (int or str) of a sparse feature to a table row as
    FORMAT.md §3 says; returns the row, or -1 for a zero vector. spec holds
    vocab_size, mapping, hash_seed, oov_buckets, missing_row, unknown_row and,
    for vocab, vocab: {hash64: row}. Raises TypeError for a bool/float id and
    ValueError for an integer outside int64 (request errors)."""
    if isinstance(value, bool) or not isinstance(value, (int, str, np.integer)):
        raise TypeError(f"an id is an int or a str, not {type(value).__name__}")
    n_rows = spec["vocab_size"]
    unknown = spec["unknown_row"]
    mapping = spec["mapping"]
    if not isinstance(value, str):
        value = int(value)
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"integer id {value} outside int64")
    if mapping == "index":
        if isinstance(value, str):
            if not _DEC_RE.fullmatch(value):
                return unknown
            value = int(value)
        return value if 0 <= value < n_rows else unknown
    if mapping == "hex_mod":
        if isinstance(value, str):
            if value == "":
                return spec["missing_row"]
            if not _HEX_RE.fullmatch(value):
                return unknown
            value = int(value, 16)
        return value % n_rows if value >= 0 else unknown
    text = str(value) if isinstance(value, int) else value
    h = hash64(spec["hash_seed"], text.encode("utf-8"))
    if mapping == "hash_mod":
        return h % n_rows
    if mapping == "vocab":
        row = spec["vocab"].get(h)
        if row is not None:
            return row
        oov = spec["oov_buckets"]
        return n_rows - oov + h % oov if oov > 0 else unknown
    raise ValueError(f"unknown mapping {mapping!r}")


def map_feature(spec, value):
    """Maps a feature value as the HTTP API takes it (None, an id, or a list
    of ids) to the list of its table rows; [] means the feature is missing
    (the engine then uses missing_row). Raises ValueError for more than
    max_ids ids."""
    if value is None:
        return []
    ids = value if isinstance(value, (list, tuple)) else [value]
    if len(ids) > spec["max_ids"]:
        raise ValueError(f"{len(ids)} ids exceed max_ids {spec['max_ids']}")
    return [map_id(spec, v) for v in ids]


# ---------------------------------------------------------------- model level

NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
CROSS_KINDS = ("vector", "full", "lowrank", "mix")
ACTIVATIONS = ("identity", "relu", "tanh", "hard_tanh", "sigmoid")
GATES = ("softmax", "sigmoid", "constant")
COMBINES = ("stacked", "parallel", "cross_only")
TRANSFORMS = ("none", "log")
POOLINGS = ("sum", "mean")
MAPPINGS = ("index", "hex_mod", "hash_mod", "vocab")
FLOAT_DTYPES = ("F32", "F16", "BF16")


def _need(meta, key):
    if key not in meta:
        raise DcnFormatError(f"missing key {key}")
    return meta[key]


def validate_metadata(meta, types=None):
    """Checks a dcnv2 metadata dict (plain values) against FORMAT.md §2-4:
    presence, types (when types, key -> type name, is given), ranges, array
    lengths, names, enums, finiteness. Raises DcnFormatError naming the key."""
    if types:
        for k, spec in KEY_TYPES.items():
            if k not in types:
                continue
            t = types[k]
            ok = (spec == "int" and t in INT_TYPES) or \
                 (isinstance(spec, tuple) and t in ("array/" + spec[1], "array")) or t == spec
            if not ok:
                raise DcnFormatError(f"{k}: type {t}, spec says {spec}")
    if _need(meta, "general.architecture") != "dcnv2":
        raise DcnFormatError("general.architecture must be dcnv2")
    if meta.get("general.alignment", ALIGNMENT) != ALIGNMENT:
        raise DcnFormatError("general.alignment must be 64")
    for k in ("general.name", "general.version"):
        v = _need(meta, k)
        if not 1 <= len(v.encode("utf-8")) <= 128:
            raise DcnFormatError(f"{k}: must be 1..128 bytes")
    fv = _need(meta, "dcnv2.format_version")
    if fv != FORMAT_VERSION:
        raise DcnFormatError(f"dcnv2.format_version {fv}, this writer implements {FORMAT_VERSION}")

    nd = _need(meta, "dcnv2.dense.count")
    ns = _need(meta, "dcnv2.sparse.count")
    if not (0 <= nd <= 4096 and 0 <= ns <= 4096 and nd + ns >= 1):
        raise DcnFormatError("dcnv2.dense.count/sparse.count: need 0..4096 each, total >= 1")
    dense_keys = ("names", "default", "clip_min", "clip_max", "transform", "log_shift",
                  "log_floor", "mean", "std")
    sparse_keys = ("names", "vocab_size", "dim", "pooling", "mapping", "hash_seed",
                   "oov_buckets", "missing_row", "unknown_row", "max_ids")
    for pre, keys, n in (("dcnv2.dense.", dense_keys, nd), ("dcnv2.sparse.", sparse_keys, ns)):
        for k in keys:
            v = _need(meta, pre + k)
            if len(v) != n:
                raise DcnFormatError(f"{pre}{k}: {len(v)} elements, expected {n}")
    names = list(meta["dcnv2.dense.names"]) + list(meta["dcnv2.sparse.names"])
    for nm in names:
        if not isinstance(nm, str) or not NAME_RE.fullmatch(nm):
            raise DcnFormatError(f"feature name {nm!r}: 1..64 bytes of [A-Za-z0-9_.:-]")
    if len(set(names)) != len(names):
        raise DcnFormatError("feature names must be unique across dense and sparse")
    g = lambda k, j: meta["dcnv2.dense." + k][j]
    for j in range(nd):
        nm = g("names", j)
        for k in ("default", "log_shift", "log_floor", "mean", "std"):
            if not math.isfinite(g(k, j)):
                raise DcnFormatError(f"dcnv2.dense.{k}[{j}] ({nm}): must be finite")
        for k in ("clip_min", "clip_max"):
            if math.isnan(g(k, j)):
                raise DcnFormatError(f"dcnv2.dense.{k}[{j}] ({nm}): NaN")
        if not g("clip_min", j) <= g("clip_max", j):
            raise DcnFormatError(f"dcnv2.dense.clip_min[{j}] ({nm}) > clip_max")
        if g("transform", j) not in TRANSFORMS:
            raise DcnFormatError(f"dcnv2.dense.transform[{j}] ({nm}): {g('transform', j)!r}")
        if not g("log_floor", j) > 0:
            raise DcnFormatError(f"dcnv2.dense.log_floor[{j}] ({nm}): must be > 0")
        if not g("std", j) > 0:
            raise DcnFormatError(f"dcnv2.dense.std[{j}] ({nm}): must be > 0")
    s = lambda k, i: meta["dcnv2.sparse." + k][i]
    for i in range(ns):
        nm = s("names", i)
        V = s("vocab_size", i)
        if not 1 <= V <= 2**40:
            raise DcnFormatError(f"dcnv2.sparse.vocab_size[{i}] ({nm}): 1..2^40")
        if not 1 <= s("dim", i) <= 4096:
            raise DcnFormatError(f"dcnv2.sparse.dim[{i}] ({nm}): 1..4096")
        if not 1 <= s("max_ids", i) <= 65536:
            raise DcnFormatError(f"dcnv2.sparse.max_ids[{i}] ({nm}): 1..65536")
        if s("pooling", i) not in POOLINGS:
            raise DcnFormatError(f"dcnv2.sparse.pooling[{i}] ({nm}): {s('pooling', i)!r}")
        if s("mapping", i) not in MAPPINGS:
            raise DcnFormatError(f"dcnv2.sparse.mapping[{i}] ({nm}): {s('mapping', i)!r}")
        for k in ("missing_row", "unknown_row"):
            r = s(k, i)
            if not (r == -1 or 0 <= r < V):
                raise DcnFormatError(f"dcnv2.sparse.{k}[{i}] ({nm}): -1 or < vocab_size")
        oov = s("oov_buckets", i)
        if s("mapping", i) == "vocab":
            if not oov < V:
                raise DcnFormatError(f"dcnv2.sparse.oov_buckets[{i}] ({nm}): must be < vocab_size")
        elif oov != 0:
            raise DcnFormatError(f"dcnv2.sparse.oov_buckets[{i}] ({nm}): 0 unless mapping is vocab")

    bottom = list(meta.get("dcnv2.bottom.sizes", []))
    deep = list(_need(meta, "dcnv2.deep.sizes"))
    for k, sizes in (("dcnv2.bottom.sizes", bottom), ("dcnv2.deep.sizes", deep)):
        if any(not 1 <= w <= 65536 for w in sizes):
            raise DcnFormatError(f"{k}: every width 1..65536")
    if bottom and nd == 0:
        raise DcnFormatError("dcnv2.bottom.sizes: a bottom MLP needs n_dense >= 1")
    d = (bottom[-1] if bottom else nd) + sum(meta["dcnv2.sparse.dim"])
    if d > 2**20:
        raise DcnFormatError(f"dim(x0) = {d} exceeds 2^20")
    kind = _need(meta, "dcnv2.cross.kind")
    if kind not in CROSS_KINDS:
        raise DcnFormatError(f"dcnv2.cross.kind: {kind!r}")
    L = _need(meta, "dcnv2.cross.layers")
    if not 0 <= L <= 64:
        raise DcnFormatError("dcnv2.cross.layers: 0..64")
    if kind in ("lowrank", "mix"):
        r = _need(meta, "dcnv2.cross.rank")
        if not 1 <= r <= d:
            raise DcnFormatError(f"dcnv2.cross.rank: 1..d ({d})")
    if kind == "mix":
        K = _need(meta, "dcnv2.cross.experts")
        if not 1 <= K <= 64:
            raise DcnFormatError("dcnv2.cross.experts: 1..64")
        if _need(meta, "dcnv2.cross.activation") not in ACTIVATIONS:
            raise DcnFormatError(f"dcnv2.cross.activation: {meta['dcnv2.cross.activation']!r}")
        if _need(meta, "dcnv2.cross.gate") not in GATES:
            raise DcnFormatError(f"dcnv2.cross.gate: {meta['dcnv2.cross.gate']!r}")
        _need(meta, "dcnv2.cross.gate_shared")
    comb = _need(meta, "dcnv2.combine")
    if comb not in COMBINES:
        raise DcnFormatError(f"dcnv2.combine: {comb!r}")
    if comb == "cross_only" and deep:
        raise DcnFormatError("dcnv2.combine cross_only needs an empty dcnv2.deep.sizes")
    targets = smooth_targets(meta)
    for k, v in meta.items():
        if not k.startswith(SMOOTH_PREFIX):
            continue
        name = k[len(SMOOTH_PREFIX):]
        if name not in targets:
            raise DcnFormatError(f"{k}: no layer of this model is quantized from tensor {name!r}")
        if types and types.get(k) not in ("array/f32", "array/f64"):
            raise DcnFormatError(f"{k}: type {types.get(k)}, must be an ARRAY of FLOAT32")
        if len(v) != targets[name]:
            raise DcnFormatError(f"{k}: {len(v)} elements, expected {targets[name]}")
        for i, f in enumerate(v):
            if not (isinstance(f, (int, float)) and 1e-30 <= f <= 1e30):
                raise DcnFormatError(f"{k}[{i}] = {f!r}: a smoothing factor must lie in [1e-30, 1e30]")


# INT8 smoothing factors (FORMAT.md §3): one key per tensor a dense layer is
# quantized from, holding a factor per input of that layer.
SMOOTH_PREFIX = "dcnv2.int8.smooth."


def smooth_targets(meta):
    """Tensor name -> number of smoothing factors its key must hold: the
    inputs of the layer quantized from it (mix: V and the gate share x, of d
    inputs; C and U take the experts' projections, K x r, expert-major)."""
    out = {}
    for j, _ in enumerate(meta.get("dcnv2.bottom.sizes", [])):
        out[f"bottom.{j}.weight"] = ([meta["dcnv2.dense.count"]] + list(meta["dcnv2.bottom.sizes"]))[j]
    d = x0_dim(meta)
    kind, L = meta["dcnv2.cross.kind"], meta["dcnv2.cross.layers"]
    for l in range(L):
        if kind == "full":
            out[f"cross.{l}.weight"] = d
        elif kind == "lowrank":
            out[f"cross.{l}.v"], out[f"cross.{l}.u"] = d, meta["dcnv2.cross.rank"]
        elif kind == "mix":
            kr = meta["dcnv2.cross.rank"] * meta["dcnv2.cross.experts"]
            out[f"cross.{l}.v"], out[f"cross.{l}.c"], out[f"cross.{l}.u"] = d, kr, kr
    h = d
    for j, w in enumerate(meta["dcnv2.deep.sizes"]):
        out[f"deep.{j}.weight"] = h
        h = w
    return out


def x0_dim(meta):
    """dim(x0): dense part (bottom output width or n_dense) plus every
    embedding dim."""
    bottom = list(meta.get("dcnv2.bottom.sizes", []))
    return (bottom[-1] if bottom else meta["dcnv2.dense.count"]) + sum(meta["dcnv2.sparse.dim"])


def expected_tensors(meta, vocab_terms=None):
    """The tensor set a valid file of this metadata must have (FORMAT.md §5):
    dict name -> (shape tuple, allowed dtypes tuple), in a canonical order.
    Optional tensors (gate biases) are listed with allowed dtypes
    ('F32', None). vocab_terms: dict feature index -> n (shapes of vocab
    tensors; None leaves n as None)."""
    out = {}
    F = FLOAT_DTYPES
    for i in range(meta["dcnv2.sparse.count"]):
        V, dim = meta["dcnv2.sparse.vocab_size"][i], meta["dcnv2.sparse.dim"][i]
        out[f"emb.{i}.weight"] = ((V, dim), F + ("I8",))
        out[f"emb.{i}.scale"] = ((V,), ("F32", "if-I8"))
        if meta["dcnv2.sparse.mapping"][i] == "vocab":
            n = (vocab_terms or {}).get(i)
            out[f"vocab.{i}.keys"] = ((n,), ("I64",))
            out[f"vocab.{i}.rows"] = ((n,), ("I32",))
    h = meta["dcnv2.dense.count"]
    for j, w in enumerate(meta.get("dcnv2.bottom.sizes", [])):
        out[f"bottom.{j}.weight"] = ((w, h), F)
        out[f"bottom.{j}.bias"] = ((w,), ("F32",))
        h = w
    d = x0_dim(meta)
    kind, L = meta["dcnv2.cross.kind"], meta["dcnv2.cross.layers"]
    r, K = meta.get("dcnv2.cross.rank"), meta.get("dcnv2.cross.experts")
    gate = meta.get("dcnv2.cross.gate")
    shared = meta.get("dcnv2.cross.gate_shared")
    if kind == "mix" and gate != "constant" and shared:
        out["cross.gate.weight"] = ((K, d), F)
        out["cross.gate.bias"] = ((K,), ("F32", None))
    for l in range(L):
        if kind == "vector":
            out[f"cross.{l}.weight"] = ((1, d), F)
        elif kind == "full":
            out[f"cross.{l}.weight"] = ((d, d), F)
        elif kind == "lowrank":
            out[f"cross.{l}.v"] = ((r, d), F)
            out[f"cross.{l}.u"] = ((d, r), F)
        elif kind == "mix":
            out[f"cross.{l}.v"] = ((K, r, d), F)
            out[f"cross.{l}.c"] = ((K, r, r), F)
            out[f"cross.{l}.u"] = ((K, d, r), F)
        else:
            raise DcnFormatError(f"dcnv2.cross.kind: {kind!r}")
        out[f"cross.{l}.bias"] = ((d,), ("F32",))
        if kind == "mix" and gate != "constant" and not shared:
            out[f"cross.{l}.gate.weight"] = ((K, d), F)
            out[f"cross.{l}.gate.bias"] = ((K,), ("F32", None))
    comb = meta["dcnv2.combine"]
    h = d
    for j, w in enumerate(meta["dcnv2.deep.sizes"]):
        out[f"deep.{j}.weight"] = ((w, h), F)
        out[f"deep.{j}.bias"] = ((w,), ("F32",))
        h = w
    zin = d + h if comb == "parallel" else (h if comb == "stacked" else d)
    out["logit.weight"] = ((1, zin), F)
    out["logit.bias"] = ((1,), ("F32",))
    return out


def _check_tensor_set(meta, shapes, vocab_arrays):
    """Checks {name: (shape, dtype)} against expected_tensors(meta) and the
    vocab tensors' contents; raises DcnFormatError naming the tensor."""
    terms = {}
    for i in range(meta["dcnv2.sparse.count"]):
        if f"vocab.{i}.keys" in shapes:
            terms[i] = shapes[f"vocab.{i}.keys"][0][0]
    exp = expected_tensors(meta, terms)
    for name in shapes:
        if name not in exp:
            raise DcnFormatError(f"tensor {name}: not part of this architecture")
    for name, (shape, allowed) in exp.items():
        if name not in shapes:
            if None in allowed:
                continue
            if "if-I8" in allowed:
                w = name[:-len("scale")] + "weight"
                if shapes.get(w, (None, None))[1] == "I8":
                    raise DcnFormatError(f"tensor {name}: required by the I8 table {w}")
                continue
            raise DcnFormatError(f"tensor {name}: missing")
        s, dt = shapes[name]
        if "if-I8" in allowed and shapes.get(name[:-len("scale")] + "weight", (0, 0))[1] != "I8":
            raise DcnFormatError(f"tensor {name}: only an I8 table has a scale")
        if tuple(s) != tuple(shape):
            raise DcnFormatError(f"tensor {name}: shape {tuple(s)}, expected {tuple(shape)}")
        if dt not in allowed:
            raise DcnFormatError(f"tensor {name}: dtype {dt} not allowed (want {allowed})")
    for i, n in terms.items():
        keys = np.asarray(vocab_arrays.get(f"vocab.{i}.keys"))
        rows = np.asarray(vocab_arrays.get(f"vocab.{i}.rows"))
        if keys.ndim == 0:
            continue                      # contents not available here
        uk = keys.astype(np.int64).view(np.uint64)
        if n > 1 and not np.all(uk[1:] > uk[:-1]):
            raise DcnFormatError(f"tensor vocab.{i}.keys: not strictly increasing")
        lim = meta["dcnv2.sparse.vocab_size"][i] - meta["dcnv2.sparse.oov_buckets"][i]
        if rows.size and (rows.min() < 0 or rows.max() >= lim):
            raise DcnFormatError(f"tensor vocab.{i}.rows: rows must be in [0, {lim})")


def spec_metadata(spec):
    """Turns a plain model spec (see build_model_file) into the typed
    metadata dict of FORMAT.md §3-4."""
    dense, sparse = spec.get("dense", []), spec.get("sparse", [])
    ity = spec.get("int_type", "u32")
    I = lambda v: Typed(ity, v)
    dget = lambda k, dflt: [float(f.get(k, dflt)) for f in dense]
    meta = {
        "general.architecture": string("dcnv2"),
        "general.alignment": u32(ALIGNMENT),
        "general.name": string(spec["name"]),
        "general.version": string(spec.get("version", "1")),
    }
    if spec.get("description"):
        meta["general.description"] = string(spec["description"])
    meta["dcnv2.format_version"] = u32(FORMAT_VERSION)
    meta.update({
        "dcnv2.dense.count": I(len(dense)),
        "dcnv2.dense.names": arr("str", [f["name"] for f in dense]),
        "dcnv2.dense.default": arr("f32", dget("default", 0.0)),
        "dcnv2.dense.clip_min": arr("f32", dget("clip_min", -math.inf)),
        "dcnv2.dense.clip_max": arr("f32", dget("clip_max", math.inf)),
        "dcnv2.dense.transform": arr("str", [f.get("transform", "none") for f in dense]),
        "dcnv2.dense.log_shift": arr("f32", dget("log_shift", 0.0)),
        "dcnv2.dense.log_floor": arr("f32", dget("log_floor", 1.0)),
        "dcnv2.dense.mean": arr("f32", dget("mean", 0.0)),
        "dcnv2.dense.std": arr("f32", dget("std", 1.0)),
        "dcnv2.sparse.count": I(len(sparse)),
        "dcnv2.sparse.names": arr("str", [f["name"] for f in sparse]),
        "dcnv2.sparse.vocab_size": arr("u64", [f["vocab_size"] for f in sparse]),
        "dcnv2.sparse.dim": arr("u32", [f["dim"] for f in sparse]),
        "dcnv2.sparse.pooling": arr("str", [f.get("pooling", "sum") for f in sparse]),
        "dcnv2.sparse.mapping": arr("str", [f.get("mapping", "index") for f in sparse]),
        "dcnv2.sparse.hash_seed": arr("u64", [f.get("hash_seed", 0) for f in sparse]),
        "dcnv2.sparse.oov_buckets": arr("u64", [f.get("oov_buckets", 0) for f in sparse]),
        "dcnv2.sparse.missing_row": arr("i64", [f.get("missing_row", -1) for f in sparse]),
        "dcnv2.sparse.unknown_row": arr("i64", [f.get("unknown_row", -1) for f in sparse]),
        "dcnv2.sparse.max_ids": arr("u32", [f.get("max_ids", 1) for f in sparse]),
    })
    if spec.get("bottom"):
        meta["dcnv2.bottom.sizes"] = arr("u32", spec["bottom"])
    c = spec["cross"]
    meta["dcnv2.cross.kind"] = string(c["kind"])
    meta["dcnv2.cross.layers"] = I(c["layers"])
    if c["kind"] in ("lowrank", "mix"):
        meta["dcnv2.cross.rank"] = I(c["rank"])
    if c["kind"] == "mix":
        meta["dcnv2.cross.experts"] = I(c["experts"])
        meta["dcnv2.cross.activation"] = string(c.get("activation", "relu"))
        meta["dcnv2.cross.gate"] = string(c.get("gate", "softmax"))
        meta["dcnv2.cross.gate_shared"] = boolean(bool(c.get("gate_shared", True)))
    meta["dcnv2.deep.sizes"] = arr("u32", spec.get("deep", []))
    meta["dcnv2.combine"] = string(spec.get("combine", "stacked"))
    return meta


def vocab_tensors(terms, seed, rows=None):
    """Hashes vocabulary terms (str) with seed: returns (keys int64 [n],
    rows int32 [n]) sorted by the unsigned hash; a term's row is its
    position in terms unless rows is given. Raises DcnFormatError on a hash
    collision or a duplicate term."""
    rows = list(range(len(terms))) if rows is None else list(rows)
    if len(rows) != len(terms):
        raise DcnFormatError("vocab: one row per term")
    pairs = {}
    for t, r in zip(terms, rows):
        h = hash64(seed, t.encode("utf-8"))
        if h in pairs:
            raise DcnFormatError(f"vocab: term {t!r} collides with another term (or repeats)")
        pairs[h] = r
    ks = sorted(pairs)
    keys = np.array(ks, dtype=np.uint64).view(np.int64)
    return keys, np.array([pairs[k] for k in ks], dtype=np.int32)


def build_model_file(path, spec, weights, checksum=True):
    """Writes a complete model file from a plain spec and float weights.

    spec: {"name", "version", "description"?, "int_type"? ("u32": type of the
    'int' keys), "dense": [{"name", "default", "clip_min", "clip_max",
    "transform", "log_shift", "log_floor", "mean", "std"}],
    "sparse": [{"name", "vocab_size", "dim", "pooling", "mapping",
    "hash_seed", "oov_buckets", "missing_row", "unknown_row", "max_ids",
    "dtype" (F32/F16/BF16/I8), "vocab" (terms, for mapping vocab),
    "vocab_rows"? }], "bottom": [widths], "cross": {"kind", "layers", "rank",
    "experts", "activation", "gate", "gate_shared"}, "deep": [widths],
    "combine", "dtype" (F32/F16/BF16: every dense weight matrix)}.
    Omitted dense/sparse fields take neutral defaults.
    weights: name -> float array for every float tensor of FORMAT.md §5
    (emb.<i>.weight as float even for I8: it is quantised here; gate biases
    optional). Returns (metadata, {name: (array, dtype)}) as written."""
    meta = spec_metadata(spec)
    plain = {k: v.value for k, v in meta.items()}
    validate_metadata(plain, _type_names(meta))
    terms = {}
    vocab = {}
    for i, f in enumerate(spec.get("sparse", [])):
        if f.get("mapping") == "vocab":
            vocab[i] = vocab_tensors(f["vocab"], f.get("hash_seed", 0), f.get("vocab_rows"))
            terms[i] = len(f["vocab"])
    exp = expected_tensors(plain, terms)
    wdt = spec.get("dtype", "F32")
    tensors = {}
    for name, (shape, allowed) in exp.items():
        if name.startswith("vocab."):
            i = int(name.split(".")[1])
            tensors[name] = (vocab[i][0] if name.endswith("keys") else vocab[i][1],
                             allowed[0])
            continue
        if name.endswith(".scale"):
            continue                        # added with its I8 table
        if name not in weights:
            if None in allowed:
                continue
            raise DcnFormatError(f"weights: missing {name}")
        w = np.asarray(weights[name], dtype=np.float32)
        if tuple(w.shape) != tuple(shape):
            raise DcnFormatError(f"weights: {name} has shape {w.shape}, expected {shape}")
        if name.startswith("emb."):
            i = int(name.split(".")[1])
            dt = spec["sparse"][i].get("dtype", "F32")
            if dt == "I8":
                q, sc = quantize_i8(w)
                tensors[name] = (q, "I8")
                tensors[f"emb.{i}.scale"] = (sc, "F32")
                continue
            tensors[name] = (w, dt)
        elif name.endswith(".bias"):
            tensors[name] = (w, "F32")
        else:
            tensors[name] = (w, wdt)
    for name in weights:
        if name not in exp:
            raise DcnFormatError(f"weights: {name} is not part of this architecture")
    write_dcn(path, meta, tensors, checksum=checksum)
    return meta, tensors
