"""``python -m dfpractise``: the command line, also as torchrun starts it (``torchrun ... -m dfpractise run``)."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="dfpractise")
