"""DVC stage prepare: raw corpus -> data/prepared/{train,val,test}.txt + stats.json."""

from tinyllm import workflow

if __name__ == "__main__":
    workflow.run_stage(workflow.prepare)
