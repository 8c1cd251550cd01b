"""``python -m fedaux.cli_data``: the ``fedaux-data`` command without the installed script."""

from fedaux.cli import main_data

if __name__ == "__main__":
    main_data()
