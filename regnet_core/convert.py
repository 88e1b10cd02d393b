"""Any checkpoint in, any checkpoint out, tensor by tensor, with proof.

``read_checkpoint`` turns a path (or a hub id) in any supported format into a
``Checkpoint``: the config (the source's own, the one given, or one inferred from the
weights) and lazy tensors under neutral names in the canonical layout, checked strictly
against the config. ``write_checkpoint`` streams one into any writable format, atomically.
``verify_conversion`` runs the result in every installed backend (and the source's own
library where it is installed) and compares logits.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import DEFAULT_MAX_SHARD_SIZE, output_dtype, parse_size
from .config import LOADING_KEYWORDS, RegNetConfig, check_field_names
from .errors import CheckpointError, FormatError
from .formats import detect_format, get_format, neutral
from .formats.base import (
    TORCH_LAYOUT,
    ForeignCheckpoint,
    Format,
    ReferenceUnavailable,
    WriteRequest,
    from_canonical_layout,
    to_canonical_layout,
)
from .formats.infer import InferredConfig, infer_config, zoo_matches
from .hub import HubError, download, looks_like_hub_id
from .io import atomic_output
from .progress import ProgressBar
from .specs import build_model_spec
from .tensors import OUTPUT_DTYPES, LazyTensor, Prefetcher, check_weight_dtypes, scratch_memory, total_bytes
from .weights import CheckpointMismatchError, check_state, parameter_table

LOGITS_ATOL = 1e-4
RTOL = 1e-5


@dataclass
class Checkpoint:
    """A model's config and weights read from any format: neutral names, canonical layout, lazy values."""

    config: RegNetConfig
    tensors: dict[str, LazyTensor]  # neutral name -> tensor, in forward order
    format: str
    source: str
    files: list[Path] = field(default_factory=list)
    config_origin: str = "checkpoint"  # "checkpoint", "given" or "inferred"
    inferred: InferredConfig | None = None
    notes: list[str] = field(default_factory=list)
    foreign: ForeignCheckpoint | None = None

    @property
    def with_head(self) -> bool:
        """True when the weights include a classifier."""
        return neutral.has_head(self.tensors)

    def canonical_state(self) -> dict[str, LazyTensor]:
        """The tensors under canonical names (RegNetForImageClassification's with a head, RegNetModel's without)."""
        names = neutral.to_canonical(self.tensors)
        return {names[name]: tensor for name, tensor in self.tensors.items()}

    def source_dtypes(self) -> dict[str, int]:
        """How many tensors the source stores in each dtype."""
        return dict(Counter(tensor.dtype for tensor in self.tensors.values()))

    @property
    def nbytes(self) -> int:
        """Stored bytes of all tensors."""
        return total_bytes(self.tensors.values())


def resolve_config(value: RegNetConfig | str | os.PathLike | None) -> RegNetConfig | None:
    """A config from a RegNetConfig, a zoo name, a config.json path or a checkpoint directory."""
    if value is None or isinstance(value, RegNetConfig):
        return value
    from .zoo import get_entry

    path = Path(value)
    if path.is_dir():
        return RegNetConfig.from_pretrained(path)
    if path.is_file():
        return RegNetConfig.from_json_file(path)
    return get_entry(str(value)).config()


def resolve_source(source: str | os.PathLike) -> Path:
    """A local path for a checkpoint path or a hub id ('owner/name')."""
    if isinstance(source, str) and looks_like_hub_id(source):
        try:
            return download(source)
        except HubError as error:
            raise HubError(f"no checkpoint at {source}: no such local path, and as a hub id: {error}") from None
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {source}: no such file or directory (nor a hub id 'owner/name')")
    return path


def _flip_bgr(tensors: dict[str, LazyTensor]) -> None:
    stem = tensors["stem.conv.weight"]
    if stem.shape[1] != 3:
        raise ValueError(f"--bgr-to-rgb needs a 3-channel stem, this one takes {stem.shape[1]} channels")
    tensors["stem.conv.weight"] = stem.map(lambda value: np.ascontiguousarray(value[:, ::-1]), layout_only=True)


def _ordered(
    tensors: Mapping[str, LazyTensor],
    config: RegNetConfig,
    source_names: Mapping[str, str],
    unknown: Sequence[str] = (),
    format_name: str = "",
    where: str = "",
) -> dict[str, LazyTensor]:
    """The tensors checked strictly against the config's table and put in its (forward) order.

    Every problem is reported at once: missing and mis-shaped tensors (canonical names) and
    unexpected ones (canonical names, plus source names that are no RegNet tensor of the format).
    """
    with_head = neutral.has_head(tensors)
    table = parameter_table(build_model_spec(config), with_head)
    canonical = neutral.to_canonical(tensors, with_prefix=with_head)
    by_canonical = {canonical[name]: tensor for name, tensor in tensors.items()}
    try:
        check_state(by_canonical, table)
        error = None
    except CheckpointMismatchError as mismatch:
        error = mismatch
    if error is not None or unknown:
        missing = error.missing if error else []
        unexpected = (error.unexpected if error else []) + list(unknown)
        mismatched = error.mismatched if error else []
        back = {canonical[name]: source_names.get(name, name) for name in tensors}
        renamed = {c: s for c, s in back.items() if s != c}
        hint = ""
        if renamed and (missing or mismatched):
            sample = ", ".join(f"{s} -> {c}" for c, s in list(renamed.items())[:3])
            hint = f" (names are canonical; the source's own names map as {sample}, ...)"
        if unknown:
            hint += f" ({len(unknown)} unexpected name(s) are no {format_name} RegNet tensor: another model or format?)"
        raise CheckpointMismatchError(missing, unexpected, mismatched, f"{where}{hint}".strip())
    inverse = {c: n for n, c in canonical.items()}
    return {inverse[t.name]: tensors[inverse[t.name]] for t in table if t.name in inverse}


def read_checkpoint(
    source: str | os.PathLike,
    format: str | None = None,
    config: RegNetConfig | str | None = None,
    *,
    bgr_to_rgb: bool = False,
) -> Checkpoint:
    """Read a checkpoint in any supported format (``format`` None: detected) as a Checkpoint.

    The config is ``config`` when given, else the one the checkpoint carries, else inferred
    from the weights. Every tensor is checked against it at once (names and shapes); values
    stay on disk until loaded.
    """
    path = resolve_source(source)
    notes: list[str] = []
    if format is None:
        fmt, notes = detect_format(path)
    else:
        fmt = get_format(format)
        if not fmt.can_read:
            raise FormatError(f"the {fmt.name} format can be written but not read")
    foreign = fmt.open(path)
    notes.extend(foreign.notes)
    mapped, unknown = fmt.to_neutral(list(foreign.tensors))
    if unknown and not mapped:
        raise FormatError(
            f"{path} holds no tensor of a {fmt.name} RegNet; saw {', '.join(unknown[:8])}"
            f"{' ...' if len(unknown) > 8 else ''} (is it another model or format? name the format with --from)"
        )
    seen: dict[str, str] = {}
    for source_name, neutral_name in mapped.items():
        if neutral_name in seen:
            raise FormatError(f"{path}: {seen[neutral_name]} and {source_name} are the same tensor ({neutral_name})")
        seen[neutral_name] = source_name
    tensors = {
        neutral_name: to_canonical_layout(foreign.tensors[source_name], neutral_name, fmt.layout)
        for neutral_name, source_name in seen.items()
    }
    check_weight_dtypes(
        {seen[n]: t for n, t in tensors.items()}, lambda name: mapped[name].endswith(".num_batches_tracked")
    )
    if bgr_to_rgb:
        _flip_bgr(tensors)
        notes = [note for note in notes if "--bgr-to-rgb" not in note]
        notes.append("stem input channels flipped from BGR to RGB order (--bgr-to-rgb): the result takes RGB input")
    inferred = None
    resolved = resolve_config(config)
    if resolved is not None:
        origin = "given"
    elif foreign.config is not None:
        resolved, origin = foreign.config, "checkpoint"
    else:
        shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
        inferred = infer_config(shapes, seen, **_label_fields(foreign))
        resolved, origin = inferred.config, "inferred"
    architecture = "RegNetForImageClassification" if neutral.has_head(tensors) else "RegNetModel"
    resolved = resolved.copy(architectures=[architecture])
    where = f"{path} (checked against {'the given' if origin == 'given' else 'its ' + origin} config)"
    ordered = _ordered(tensors, resolved, seen, unknown, fmt.name, where)
    return Checkpoint(resolved, ordered, fmt.name, str(source), foreign.files, origin, inferred, notes, foreign)


def _label_fields(foreign: ForeignCheckpoint) -> dict[str, Any]:
    labels = foreign.extra.get("id2label")
    return {"id2label": labels} if labels else {}


# ----------------------------------------------------------------------------- writing


def output_format(destination: str | os.PathLike, format: str | None = None) -> Format:
    """The format to write: ``format`` when given, else told from the destination's name."""
    if format is not None:
        fmt = get_format(format)
    else:
        name = str(destination)
        if name.endswith(".weights.h5"):
            fmt = get_format("keras")
        elif name.endswith(".msgpack"):
            fmt = get_format("flax")
        elif Path(name).suffix == "" or Path(name).is_dir():
            fmt = get_format("hf")
        else:
            raise FormatError(
                f"cannot tell which format to write to {destination}: a directory name gives hf, *.weights.h5 keras, "
                "*.msgpack flax; name another with --to FORMAT (e.g. --to timm for a .safetensors or .pth state dict)"
            )
    if not fmt.can_write:
        raise FormatError(
            f"the {fmt.name} format can be read but not written; write hf, hf-tf, hf-flax, keras, flax or timm"
        )
    if not fmt.writes_directory and fmt.output_suffixes and not str(destination).endswith(fmt.output_suffixes):
        raise FormatError(f"{fmt.name} output is a file named *{' or *'.join(fmt.output_suffixes)}, got {destination}")
    return fmt


def write_checkpoint(
    checkpoint: Checkpoint,
    destination: str | os.PathLike,
    format: str | None = None,
    *,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    progress: bool | None = None,
) -> list[Path]:
    """Stream a checkpoint into ``destination`` in a format; it appears whole or not at all.

    ``dtype`` casts floating tensors (float32, float16, bfloat16); by default each keeps its
    stored dtype (float64 becomes float32). ``progress`` None shows a bar when stderr is a terminal.
    """
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {dtype!r}")
    fmt = output_format(destination, format)
    max_bytes = parse_size(max_shard_size)
    destination = Path(destination)
    if destination.resolve() in {Path(f).resolve() for f in checkpoint.files} or any(
        destination.resolve() == Path(f).resolve().parent for f in checkpoint.files
    ):
        raise ValueError(f"the destination {destination} is the source itself; write somewhere else")
    dtypes = {name: output_dtype(tensor, dtype) for name, tensor in checkpoint.tensors.items()}
    bar = ProgressBar(checkpoint.nbytes, len(checkpoint.tensors), f"writing {fmt.name}", enabled=progress)
    # Temporaries come from reused memory: fresh pages cost more than the copies (ScratchPool).
    with scratch_memory():
        # A background thread reads the next tensors, and puts them in the format's layout, while
        # the current one is written.
        if fmt.layout == TORCH_LAYOUT:
            prefetcher = Prefetcher(checkpoint.tensors)
            tensors, prepared = prefetcher.wrap(), None
        else:
            prefetcher = Prefetcher({n: from_canonical_layout(t, n, fmt.layout) for n, t in checkpoint.tensors.items()})
            tensors, prepared = checkpoint.tensors, prefetcher.wrap()
        try:
            with atomic_output(destination, overwrite=overwrite) as temporary:
                preprocessor = checkpoint.foreign.extra.get("preprocessor") if checkpoint.foreign is not None else None
                request = WriteRequest(
                    temporary,
                    checkpoint.config,
                    tensors,
                    dtypes,
                    max_bytes,
                    bar,
                    preprocessor,
                    destination,
                    prepared,
                    fmt.layout,
                )
                written = fmt.write(request)
        finally:
            prefetcher.close()
            bar.close()
    return [destination / path.relative_to(temporary) if path != temporary else destination for path in written]


# ----------------------------------------------------------------------------- proof


@dataclass(frozen=True)
class VerifyRow:
    """One comparison: who ran, against what, how far apart."""

    name: str
    reference: str
    max_abs: float
    max_rel: float
    passed: bool


@dataclass
class VerifyReport:
    """Every comparison --verify made, and the input it used."""

    input_shape: tuple[int, ...]
    output: str  # "logits" or "pooler_output"
    rows: list[VerifyRow]
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every comparison is within the parity tolerance (and at least one ran)."""
        return bool(self.rows) and all(row.passed for row in self.rows)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "input_shape": list(self.input_shape),
            "output": self.output,
            "tolerance": {"logits_max_abs": LOGITS_ATOL, "max_rel": RTOL},
            "passed": self.passed,
            "rows": [row.__dict__ for row in self.rows],
            "skipped": self.skipped,
            "notes": self.notes,
        }

    def format(self) -> str:
        """A table for the terminal."""
        lines = [f"verify: {self.output} on a seeded N(0, 1) batch {self.input_shape} (NCHW)"]
        for row in self.rows:
            flag = "ok" if row.passed else "ABOVE TOLERANCE"
            lines.append(
                f"  {row.name:<28} vs {row.reference:<22} max_abs {row.max_abs:.3e}  max_rel {row.max_rel:.3e}  {flag}"
            )
        for note in self.notes:
            lines.append(f"  note: {note}")
        for reason in self.skipped:
            lines.append(f"  skipped: {reason}")
        lines.append("verify: PASS" if self.passed else "verify: FAIL")
        return "\n".join(lines)


def _difference(reference: np.ndarray, other: np.ndarray, is_logits: bool) -> tuple[float, float, bool]:
    reference = np.asarray(reference, np.float64).reshape(reference.shape[0], -1)
    other = np.asarray(other, np.float64).reshape(other.shape[0], -1)
    if reference.shape != other.shape:
        return float("inf"), float("inf"), False
    max_abs = float(np.max(np.abs(reference - other))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return max_abs, max_rel, max_rel <= RTOL and (not is_logits or max_abs <= LOGITS_ATOL)


def installed_frameworks() -> list[str]:
    """The backends whose framework is installed here ('pt', 'tf', 'flax')."""
    found = []
    for name, module in (("pt", "torch"), ("tf", "tensorflow"), ("flax", "flax")):
        if importlib.util.find_spec(module) is not None:
            found.append(name)
    return found


def run_backend(framework: str, checkpoint: Checkpoint, pixel_values: np.ndarray) -> np.ndarray:
    """Logits (pooled features for a trunk) of a checkpoint in one backend, on an NCHW batch."""
    from .backends import get_backend

    backend = get_backend(framework)
    model = backend.from_canonical(checkpoint.config, checkpoint.canonical_state(), checkpoint.with_head)
    outputs = backend.run(model, pixel_values, output_hidden_states=False)
    result = outputs["logits"] if "logits" in outputs else outputs["pooler_output"]
    return np.asarray(result).reshape(pixel_values.shape[0], -1)


def _cast_like_output(checkpoint: Checkpoint, dtypes: Mapping[str, str]) -> Checkpoint:
    """The checkpoint with each tensor rounded to the dtype it is written in (what the output holds)."""
    from .tensors import from_storage, to_storage

    def rounded(tensor: LazyTensor, dtype: str) -> LazyTensor:
        if dtype == tensor.dtype or dtype not in ("float16", "bfloat16"):
            return tensor
        return tensor.map(lambda value: from_storage(to_storage(value, dtype), dtype).astype(np.float32))

    tensors = {name: rounded(tensor, dtypes[name]) for name, tensor in checkpoint.tensors.items()}
    return Checkpoint(checkpoint.config, tensors, checkpoint.format, checkpoint.source, checkpoint.files)


def verify_conversion(
    source: Checkpoint,
    destination: str | os.PathLike,
    destination_format: str | None = None,
    frameworks: Sequence[str] | None = None,
    batch: int = 2,
    image_size: int | None = None,
    seed: int = 0,
    dtype: str | None = None,
) -> VerifyReport:
    """Run the written checkpoint in every installed backend and compare with the source model.

    The reference is the source's own library where it can run (timm, transformers,
    Keras); otherwise the source weights as read, run in the first installed backend. When
    ``dtype`` narrowed the weights, the reference weights are rounded the same way and the
    distance to the unrounded source is reported apart (not held to the tolerance).
    """
    fmt = get_format(source.format)
    size = image_size or fmt.verify_image_size
    channels = source.config.num_channels
    pixel_values = np.random.default_rng(seed).standard_normal((batch, channels, size, size)).astype(np.float32)
    frameworks = list(frameworks) if frameworks is not None else installed_frameworks()
    output = "logits" if source.with_head else "pooler_output"
    report = VerifyReport(tuple(pixel_values.shape), output, [])
    dtypes = {name: output_dtype(tensor, dtype) for name, tensor in source.tensors.items()}
    narrowed = any(dtypes[name] != tensor.dtype for name, tensor in source.tensors.items() if dtypes[name] != "float32")
    reference = None
    if not narrowed and source.foreign is not None:
        try:
            reference = fmt.reference_logits(source.foreign, source.config)
        except (ReferenceUnavailable, ImportError) as error:
            report.skipped.append(f"the source model could not run in its own library: {error}")
    if reference is not None:
        reference_name = fmt.library or f"{fmt.name} library"
        expected = np.asarray(reference(pixel_values)).reshape(batch, -1)
    elif frameworks:
        reference_name = f"source weights in {frameworks[0]}"
        if narrowed:
            reference_name = f"source rounded to {dtype}, {frameworks[0]}"
            full = run_backend(frameworks[0], source, pixel_values)
            expected = run_backend(frameworks[0], _cast_like_output(source, dtypes), pixel_values)
            max_abs, max_rel, _ = _difference(full, expected, output == "logits")
            report.notes.append(
                f"{dtype} weights vs the {'/'.join(sorted(set(source.source_dtypes())))} source: "
                f"max_abs {max_abs:.3e}, max_rel {max_rel:.3e} (the cost of the cast; not held to the tolerance)"
            )
        else:
            expected = run_backend(frameworks[0], source, pixel_values)
    else:
        report.skipped.append("no framework is installed: nothing could run")
        return report
    written = read_checkpoint(destination, destination_format, config=source.config)
    for framework in frameworks:
        got = run_backend(framework, written, pixel_values)
        max_abs, max_rel, passed = _difference(expected, got, output == "logits")
        report.rows.append(VerifyRow(f"{framework} (converted)", reference_name, max_abs, max_rel, passed))
    return report


@dataclass
class ConversionReport:
    """What a conversion read, inferred and wrote."""

    source: Checkpoint
    destination: Path
    destination_format: str
    files: list[Path]
    dtype: str | None
    verify: VerifyReport | None = None

    def summary(self) -> str:
        """Lines for the terminal."""
        source = self.source
        lines = [
            f"read {source.source} ({source.format}): {len(source.tensors)} tensors, {source.nbytes / 1e6:.1f} MB "
            f"({', '.join(f'{k} x{v}' for k, v in source.source_dtypes().items())})"
        ]
        lines.extend(f"note: {note}" for note in source.notes)
        if source.inferred is not None:
            lines.append(f"inferred: {source.inferred.describe()}")
        elif source.config_origin == "given":
            matches = zoo_matches(source.config)
            lines.append("config: given" + (f" ({' = '.join(matches)})" if matches else ""))
        total = sum(path.stat().st_size for path in self.files if path.is_file())
        lines.append(
            f"wrote {self.destination} ({self.destination_format}{', ' + self.dtype if self.dtype else ''}): "
            f"{len(self.files)} file(s), {total / 1e6:.1f} MB"
        )
        if self.verify is not None:
            lines.append(self.verify.format())
        return "\n".join(lines)


def convert(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    from_format: str | None = None,
    to_format: str | None = None,
    config: RegNetConfig | str | None = None,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    bgr_to_rgb: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    verify: bool = False,
    verify_frameworks: Sequence[str] | None = None,
) -> ConversionReport:
    """Read ``source`` in any format and write ``destination``; with ``verify``, prove the logits agree."""
    checkpoint = read_checkpoint(source, from_format, config, bgr_to_rgb=bgr_to_rgb)
    fmt = output_format(destination, to_format)
    files = write_checkpoint(
        checkpoint,
        destination,
        fmt.name,
        dtype=dtype,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        progress=progress,
    )
    report = ConversionReport(checkpoint, Path(destination), fmt.name, files, dtype)
    if verify:
        report.verify = verify_conversion(checkpoint, destination, fmt.name, verify_frameworks, dtype=dtype)
    return report


def load_pretrained(
    source: str | os.PathLike,
    format: str | None = None,
    config: RegNetConfig | str | None = None,
    **config_changes: Any,
) -> tuple[RegNetConfig, dict[str, LazyTensor]]:
    """(config, canonical tensors read lazily) for a backend's ``from_pretrained``, from any supported source.

    ``config_changes`` edit the config after the weights were checked against the
    checkpoint's own (e.g. ``num_labels=10`` with a backend's ``reinit_head``); a name that
    is no config field is a ConfigError naming the nearest, raised before anything is read.
    """
    check_field_names(config_changes, "from_pretrained()", also=LOADING_KEYWORDS)
    checkpoint = read_checkpoint(source, format, config)
    result = checkpoint.config
    if config_changes:
        result = result.copy(**config_changes)
    return result, checkpoint.canonical_state()
