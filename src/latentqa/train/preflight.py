"""Checks of ``latentqa train``'s inputs, run before any model loads."""

from __future__ import annotations

from pathlib import Path

from latentqa.errors import LatentQAError
from latentqa.layers import check_layers
from latentqa.models import check_device_dtype, model_shape
from latentqa.outdir import check_output_folder
from latentqa.train.config import TrainConfig


def _check_folder(path: str | Path, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LatentQAError(f"{what} {folder} does not exist or is not a folder")
    return folder


def preflight_train(config: TrainConfig, *, resume: bool = False) -> None:
    """Everything ``latentqa train`` can check before loading the target.

    Options' values, device and dtype, the data folders and files (parsed, kinds
    included), ``--resume`` having a checkpoint, the output folder, and read / write
    layers against the target's config.

    Raises:
        LatentQAError: The first problem found, in one line.
    """
    from latentqa.data.format import load_latentqa
    from latentqa.train.checkpoint import latest_checkpoint
    from latentqa.train.prepare import data_folders

    config.validate()
    check_device_dtype(config.device, config.dtype)
    check_output_folder(config.out, "--out")
    check_output_folder(config.cache_dir, "--cache-dir")
    checkpoints = Path(config.out) / "checkpoints"
    if resume and latest_checkpoint(checkpoints) is None:
        raise LatentQAError(
            f"--resume: no checkpoint in {checkpoints}; run without --resume to start afresh"
        )
    if config.init_from is not None and not resume:
        from latentqa.decoder.folder import open_decoder_folder

        open_decoder_folder(config.target, config.init_from)  # a decoder, or a clear error
    train_folder, eval_folder = data_folders(config)
    load_latentqa(train_folder, config.kinds)
    for folder in config.extra_data or []:
        load_latentqa(_check_folder(folder, "--extra-data folder"), config.kinds, require_qa=False)
    if eval_folder is not None:
        load_latentqa(_check_folder(eval_folder, "--eval-data folder"), config.kinds)
    shape = model_shape(config.target, trust_remote_code=config.trust_remote_code)
    if shape is not None and config.layers_path is None:
        check_layers(config.read_layers, shape[0], "read layer")
        check_layers([config.write_layer], shape[0], "write layer")
