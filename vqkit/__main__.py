"""``python -m vqkit ...`` (and ``torchrun -m vqkit train ...``)."""

from vqkit.cli.main import main

if __name__ == "__main__":
    main()
