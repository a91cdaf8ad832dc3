"""Pipelines: the diffusers `DiffusionPipeline`s of each model and the transformers "text-to-image" task."""

from .dalle.pipeline_dalle import DallePipeline
from .pipeline_output import T2IPipelineOutput
from .pipeline_utils import T2IPipeline
from .text_to_image import TextToImagePipeline


__all__ = ["DallePipeline", "T2IPipeline", "T2IPipelineOutput", "TextToImagePipeline"]
