"""`loraclf export`: a trained artifact written in another format (see deploy/exporters/).

The output is staged beside the destination and renamed into place at the end, so a failed export
leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import LoraclfError
from .exporters import EXPORTERS, Exporter


def _options(exporter: Exporter, fmt: str, given: dict) -> dict:
    """The exporter's options: each given one checked against what it allows, the rest at their defaults."""
    for key, value in given.items():
        if value is None:
            continue
        if key not in exporter.options:
            raise LoraclfError(f"--{key} {value} is not supported with --format {fmt} (use "
                               + " or ".join(f"--format {e.name} --{key}"
                                             + (f" {'/'.join(map(str, e.options[key]))}" if e.options[key] else "")
                                             for e in EXPORTERS.values() if key in e.options) + ")")
        allowed = exporter.options[key]
        if allowed is not None and value not in allowed:
            raise LoraclfError(f"--{key} {value} is not supported with --format {fmt} (use --format {fmt} "
                               f"--{key} {'/'.join(map(str, allowed))})")
    return {**exporter.defaults, **{k: v for k, v in given.items() if v is not None}}


def export(source: str | Path, out: str | Path, fmt: str = "hf", *, base_model: Optional[str] = None,
           allow_other_base: bool = False, **options) -> Path:
    """Export the artifact (or run directory) `source` into the new folder `out`; returns `out`."""
    from ..schema import artifact_dir, check_output_folder, read_meta, staged_folder
    from .artifact import load

    if fmt not in EXPORTERS:
        raise LoraclfError(f"export format must be one of {', '.join(EXPORTERS)}, not {fmt!r}")
    exporter = EXPORTERS[fmt]
    opts = _options(exporter, fmt, options)
    art = artifact_dir(source)
    meta = read_meta(art)
    if meta["format"] in EXPORTERS:
        raise LoraclfError(f"{art} is already an {EXPORTERS[meta['format']].title} export; export the run or "
                           "artifact it came from")
    out = check_output_folder(Path(out))
    exporter.check(meta, opts)  # a missing extra or an unsupported head fails before any weights load
    clf = load(art, base_model=base_model, device="cpu", merge=True, allow_other_base=allow_other_base)
    with staged_folder(out, "export") as stage:
        exporter.write(clf, art, stage, opts)
    return out
