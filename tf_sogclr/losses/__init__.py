"""Contrastive losses: SogCLR's global losses with their u-tables, and the controls.

    global_contrastive   GlobalContrastiveLoss (unimodal), the gamma schedule, the shared step
    bimodal_global_contrastive  BimodalGlobalContrastiveLoss (image-text)
    controls             NTXentLoss / nt_xent_loss (SimCLR), ClipContrastiveLoss (CLIP)
    u_table              UTable: per-example log u, sparse reads and writes
    temperature_table    TemperatureTable: iSogCLR's per-example temperatures
    learnable_temperature  LearnableTemperature: one global tau in log space (image-text)
    inputs               input checks, normalisation, the global batch's self mask

Every loss layer has one interface: `loss_fn(a, b, index, return_metrics=False)`,
`set_epoch`, `schedule_logs`, `table_estimates`, `metric_names` (metrics beyond the standard
ones) and `num_examples` (None without a table).
"""

from tf_sogclr.losses.bimodal_global_contrastive import BimodalGlobalContrastiveLoss
from tf_sogclr.losses.controls import (CLIP_TEMPERATURE, ClipContrastiveLoss, NTXentLoss,
                                       nt_xent_loss)
from tf_sogclr.losses.global_contrastive import (GAMMA_SCHEDULES, GlobalContrastiveLoss,
                                                 gamma_for_epoch)
from tf_sogclr.losses.learnable_temperature import LearnableTemperature, LogClamp
from tf_sogclr.losses.temperature_table import TemperatureTable
from tf_sogclr.losses.u_table import UNVISITED, UTable

__all__ = [
    "CLIP_TEMPERATURE", "ClipContrastiveLoss", "NTXentLoss", "nt_xent_loss", "GAMMA_SCHEDULES",
    "BimodalGlobalContrastiveLoss", "GlobalContrastiveLoss", "gamma_for_epoch", "UNVISITED",
    "LearnableTemperature", "LogClamp", "TemperatureTable", "UTable",
]
