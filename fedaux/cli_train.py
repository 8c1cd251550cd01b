"""``python -m fedaux.cli_train``: the ``fedaux-train`` command without the installed script."""

from fedaux.cli import main_train

if __name__ == "__main__":
    main_train()
