"""Pipelines: the diffusers `DiffusionPipeline`s of each model and the transformers "text-to-image" task."""

from .autoregressive import AutoregressiveT2IPipeline
from .dalle.pipeline_dalle import DallePipeline
from .fluid.pipeline_fluid import FluidPipeline
from .muse.pipeline_muse import MusePipeline
from .parti.pipeline_parti import PartiPipeline
from .pipeline_output import T2IPipelineOutput
from .pipeline_utils import T2IPipeline
from .text_to_image import TextToImagePipeline
from .transfusion.pipeline_transfusion import TransfusionPipeline


__all__ = [
    "AutoregressiveT2IPipeline",
    "DallePipeline",
    "FluidPipeline",
    "MusePipeline",
    "PartiPipeline",
    "T2IPipeline",
    "T2IPipelineOutput",
    "TextToImagePipeline",
    "TransfusionPipeline",
]
