"""The SavedModel export command, from a checkout: `python export/savedmodel.py MODEL.keras ...`.

The same as the `keras-secondorder-export` console script that `pip install keras-secondorder`
puts on the PATH; the code is `keras_secondorder.export`. `--help` lists the options.
"""

from keras_secondorder.export.savedmodel import main

if __name__ == "__main__":
    main()
