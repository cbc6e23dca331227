"""DVC stage evaluate: models/model/ -> models/eval/ metrics + samples; MLflow log + register."""

from tinyllm import workflow

if __name__ == "__main__":
    workflow.run_stage(workflow.evaluate)
