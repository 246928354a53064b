"""MLflow adapters (no Prefect here, and the core never imports them): ``runs`` (the
tracking server, runs, the registry and its champion), ``identifier_model`` (the identifier
as a pyfunc model) and ``served_model`` (the file MLflow logs as the model's code)."""
