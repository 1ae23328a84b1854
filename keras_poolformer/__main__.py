import sys

from keras_poolformer.cli import main

sys.exit(main())
