"""The labeling web app (FastAPI + server-rendered templates). Never imports torch."""
