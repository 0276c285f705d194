"""`python -m keras_secondorder.spectrum MODEL --data ...` (see `spectrum.cli`)."""

from keras_secondorder.spectrum.cli import main

main()
