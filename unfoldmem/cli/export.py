r"""`unfoldmem export`: the cINN sampler / transfer-flow density as ONNX or TorchScript graphs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from unfoldmem.cli._common import console, state

__all__ = ["register", "export"]


def export(
    model: Path = typer.Argument(..., help="Trained model directory (cINN or transfer flow)."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx | torchscript."),
    output: Path = typer.Option(Path("export"), "--output", "-o", help="Output directory."),
    dtype: str = typer.Option("float64", "--dtype",
                              help="float64 (exact weights, ~1e-7 agreement) | float32."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Export MODEL: OUT/cinn_sampler.onnx or OUT/transfer_log_density.onnx + OUT/export.json.

    The cINN graph maps (reco, mask, z) to partons, z ~ N(0, 1) being an input so that the
    graph is deterministic; the transfer graph maps (partons, reco, mask) to log W. Each graph
    is checked against torch on an example batch; export.json records the deviation.

    Example: ``unfoldmem export models/cinn --format onnx -o out/onnx``
    """
    from unfoldmem.errors import ModelError
    from unfoldmem.flows.export import FORMATS, export_model
    from unfoldmem.flows.model_dir import load_model
    from unfoldmem.io.atomic import atomic_path, check_writable

    if fmt not in FORMATS:
        msg = f"expected one of {', '.join(FORMATS)}, got {fmt!r}"
        raise typer.BadParameter(msg, param_hint="--format")
    if dtype not in ("float32", "float64"):
        msg = f"expected float32 or float64, got {dtype!r}"
        raise typer.BadParameter(msg, param_hint="--dtype")
    check_writable(output, overwrite)
    loaded = load_model(model)
    with atomic_path(output, overwrite, directory=True) as tmp:
        try:
            manifest = export_model(loaded.model, tmp, fmt, dtype)
        except ValueError as exc:
            raise ModelError(str(model), str(exc)) from exc
        manifest["source"] = str(model)
        manifest["model_meta"] = {k: loaded.meta.get(k) for k in ("data_hash", "created_utc")}
        (tmp / "export.json").write_text(json.dumps(manifest, indent=1))
    if not state.quiet:
        for g in manifest["graphs"]:
            console.print(f"  {g['file']}: {' , '.join(g['inputs'])} -> {g['output']}, "
                          f"max |graph - torch| = {g['max_abs_dev']:.2g}")
    typer.echo(f"{output}: {len(manifest['graphs'])} {fmt} graph(s), "
               f"max deviation {manifest['max_abs_dev']:.2g}")


def register(app: typer.Typer) -> None:
    """Add the ``export`` command."""
    app.command("export")(export)
