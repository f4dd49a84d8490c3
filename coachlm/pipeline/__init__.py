"""Declared pipelines: a YAML file of named stages (`spec`), each a kind with the typed config
its command takes (`kinds`), cached by the hash of its whole resolved config with a lineage
manifest (`cache`), run in order with resume and `--from` (`run`).

    pipe = load_pipeline("pipeline.yaml", overrides=["ppo.ppo.steps=20"])
    records = run_pipeline(pipe, Path("runs/x"))        # stage name -> stage.json record
"""

from coachlm.pipeline.cache import console, run_stage, stage_key
from coachlm.pipeline.run import run_pipeline
from coachlm.pipeline.spec import Pipeline, PipelineError, Ref, StageSpec, load_pipeline

__all__ = ["Pipeline", "PipelineError", "Ref", "StageSpec", "console", "load_pipeline",
           "run_pipeline", "run_stage", "stage_key"]
