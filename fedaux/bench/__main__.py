"""``python -m fedaux.bench`` (the scale points run this way, one process each)."""

from fedaux.bench import main

main()
