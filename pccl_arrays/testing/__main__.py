"""``python -m pccl_arrays.testing TARGET MASTER INDEX ARGS_JSON OUT_DIR``: one peer of the churn harness."""

import sys

from .peer import main

sys.exit(main(sys.argv[1:]))
