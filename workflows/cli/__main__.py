"""``python -m workflows.cli``. Only the guard: Dask's spawned worker processes re-import this module (as
``__mp_main__``), and must not run the CLI."""

if __name__ == "__main__":
    from workflows.cli import main

    main(prog_name="scenewatch")
