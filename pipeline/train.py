"""DVC stage train: tokens + model/train params -> models/model/, curves, MLflow run."""

from tinyllm import workflow

if __name__ == "__main__":
    workflow.run_stage(workflow.train)
