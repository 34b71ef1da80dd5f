"""Loading OpenVINO models with errors that name the problem and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

OV_MODEL_FILE = "openvino_model.xml"


def local_directory(model_id: Union[str, Path]) -> Optional[Path]:
    """``model_id`` as a Path when it is an existing local directory."""
    path = Path(model_id)
    return path if path.is_dir() else None


def looks_like_local_path(model_id: Union[str, Path]) -> bool:
    """Whether ``model_id`` is meant as a local path rather than a hub id ("org/name")."""
    if isinstance(model_id, Path) or Path(model_id).exists():
        return True
    text = str(model_id)
    return text.startswith(("/", "./", "../", "~", ".\\")) or text.count("/") > 1 or "\\" in text


def check_model_directory(path: Path, export: bool, role: str) -> None:
    """Refuse a local directory that cannot hold the model, before optimum-intel fails deeper."""
    if export:
        if not (path / "config.json").exists():
            raise ValueError(
                f"{role} directory {path} has no config.json, so it is not a transformers checkpoint to export. "
                "Point to a checkpoint directory (config.json + weights) or to an exported OpenVINO directory "
                f"({OV_MODEL_FILE}) without export=True."
            )
        return
    xml = path / OV_MODEL_FILE
    if not xml.exists():
        hint = (
            " It looks like a transformers checkpoint: pass export=True to convert it."
            if (path / "config.json").exists()
            else f" Export one with `optimum-cli export openvino --model <checkpoint> {path}`."
        )
        raise FileNotFoundError(f"{role} directory {path} has no {OV_MODEL_FILE}.{hint}")
    if not xml.with_suffix(".bin").exists():
        raise FileNotFoundError(
            f"{role} directory {path} has {OV_MODEL_FILE} but no openvino_model.bin (the weights); "
            "the export is incomplete: export the model again."
        )
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{role} directory {path} has no config.json; copy it from the original checkpoint or export again."
        )


def from_pretrained_checked(cls, model_id: Union[str, Path], *args: Any, role: str = "target", **kwargs: Any):
    """``cls.from_pretrained`` through optimum-intel's original loader, with clear errors for local paths."""
    from .registration import original_from_pretrained

    path = local_directory(model_id)
    if path is not None:
        check_model_directory(path, bool(kwargs.get("export")), role)
    elif looks_like_local_path(model_id):
        what = "is a file, not a directory" if Path(model_id).exists() else "does not exist"
        raise FileNotFoundError(
            f"{role} directory {model_id} {what}. Pass the directory that holds {OV_MODEL_FILE} (or a transformers "
            "checkpoint with export=True), or a hub id of the form 'org/name'."
        )
    try:
        return original_from_pretrained(cls, model_id, *args, **kwargs)
    except RuntimeError as error:
        if path is None:
            raise
        raise ValueError(
            f"could not read the {role} OpenVINO model in {path} ({str(error).splitlines()[0]}); the files are "
            "corrupt or from an incompatible exporter: export the model again."
        ) from error
    except OSError as error:
        if path is not None:
            raise
        raise OSError(
            f"could not load the {role} {model_id!r}: it is not a local directory and could not be fetched "
            f"({error}). Pass a local path, or check the hub id and your network."
        ) from error
