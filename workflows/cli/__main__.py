"""``python -m workflows.cli``. Kept to the guard alone: Dask's spawned worker processes re-import this
module (as ``__mp_main__``) and must not load the CLI."""

if __name__ == "__main__":
    from workflows.cli.main import main

    main(prog_name="scenewatch")
