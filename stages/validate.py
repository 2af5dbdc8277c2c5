"""DVC stage `validate`: the whole params.yaml checked against the typed settings (promptseg.settings), first.

It depends on params.yaml as a FILE, so any edit reruns it, even when no other stage's declared keys changed
(`dvc exp run -S +data.cracks.sorce=local` adds a key no stage reads): an unknown key, a wrong type or a value
out of range stops `dvc repro` and `dvc exp run` here with one message (exit 2). It writes
metrics/params_check.txt, whose text does not change while the file is valid; download@<dataset> depends on
it, so every stage runs after it and none reruns because of it.
"""

from promptseg import paths
from promptseg.settings import load_stage_settings, validate_params


def main() -> None:
    load_stage_settings("validate", validate_params)
    paths.METRICS.mkdir(exist_ok=True)
    paths.PARAMS_CHECK.write_text("params.yaml: valid (promptseg.settings.validate_params)\n")
    print(f"[validate] params.yaml: valid; {paths.PARAMS_CHECK}")


if __name__ == "__main__":
    main()
