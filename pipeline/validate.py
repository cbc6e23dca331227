"""DVC stage validate: params.yaml and the corpus checked -> data/validated.txt, before any
stage removes its outputs."""

from tinyllm import workflow

if __name__ == "__main__":
    workflow.run_stage(workflow.validate)
