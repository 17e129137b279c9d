"""A second opinion for any pretrained model: its own features, a cache, and a blend (Orhan 2018).

- :class:`FeatureExtractor`: features of named layers (forward hooks) and class probabilities, one pass.
- :class:`SecondOpinion`: fit a cache of the model's features, tune θ, λ and the layer on held-out data,
  predict, audit the changed decisions, save / load (refused for another model's weights).
- :func:`load_model`: a metriclearn run directory with a classification head, a Hugging Face model directory
  or a TorchScript file, as a classifier module with its class names (what ``metriclearn second-opinion
  --model`` reads).
"""

from metriclearn.pretrained.extractor import FeatureExtractor, candidate_layers, default_layer
from metriclearn.pretrained.loading import LoadedModel, load_model
from metriclearn.pretrained.second_opinion import SecondOpinion, align_labels

__all__ = ["FeatureExtractor", "LoadedModel", "SecondOpinion", "align_labels", "candidate_layers", "default_layer",
           "load_model"]
