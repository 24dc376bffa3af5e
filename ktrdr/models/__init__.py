"""Trained models: the versioned registry in the ``models`` object store, and the plan of a training
request (``training_plan``: which strategy, bars and registry name)."""

from ktrdr.models.registry import (
    ModelNotFoundError,
    ModelVersion,
    list_models,
    load_model,
    parse_model_ref,
    save_model,
    show_model,
)

__all__ = ["ModelNotFoundError", "ModelVersion", "list_models", "load_model", "parse_model_ref", "save_model",
           "show_model"]
