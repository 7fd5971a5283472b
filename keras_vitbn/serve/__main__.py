import sys

from keras_vitbn.serve.app import main

sys.exit(main())
