"""The trainer tests' helpers (tiny_model, helpers) write the checkpoints these tests read."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train"))
