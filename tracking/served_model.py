"""The served model, logged as code (MLflow's "models from code"): loading it runs this
file instead of unpickling an object, so a model file cannot smuggle code in a pickle."""

from mlflow.models import set_model

from tracking.identifier_model import IdentifierModel

set_model(IdentifierModel())
