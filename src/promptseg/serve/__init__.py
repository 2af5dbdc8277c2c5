"""Serving: the `promptseg` CLI, the Gradio app, the MLflow pyfunc model, crack/joint measurement."""
