"""``python -m tooldistill.cli ...``: the same as the ``tooldistill`` command."""

from tooldistill.cli.root import main

if __name__ == "__main__":
    main()
